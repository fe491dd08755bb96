"""Write the small .params fixtures that tests/test_mxnet_params.py reads, with real MXNet.

Run in the side virtualenv: `.venv-mxnet/bin/python tests/mxnet/make_fixtures.py`. Each array holds
arange(n) reshaped (n = its size), so the test knows every value without MXNet.
  dtypes.params  format V2 (`mx.nd.save`): one array per dtype, names with and without arg:/aux:
  numpy.params   format V3 (`npx.save` under NumPy semantics): a 0-d scalar and a zero-size array
"""

from pathlib import Path

import mxnet as mx
import numpy as np

HERE = Path(__file__).resolve().parent / "fixtures"
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64")


def main() -> None:
    arrays = {f"arg:{dtype}_weight": mx.nd.array(np.arange(6).reshape(2, 3), dtype=dtype) for dtype in DTYPES}
    arrays["aux:bn_running_mean"] = mx.nd.array(np.arange(4), dtype="float32")
    arrays["plain_name"] = mx.nd.array(np.arange(24).reshape(2, 3, 4), dtype="float32")
    mx.nd.save(str(HERE / "dtypes.params"), arrays)
    mx.npx.set_np()
    mx.npx.save(str(HERE / "numpy.params"), {"scalar": mx.np.array(0.0), "empty": mx.np.ones((2, 0)),
                                             "vector": mx.np.arange(3, dtype="float32")})


if __name__ == "__main__":
    main()
