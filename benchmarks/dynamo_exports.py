"""Transformers as torch's default (dynamo) exporter writes them compile unmodified (#19): BERT-base, DistilBERT and
GPT-2 from their `transformers` configs (random weights, nothing downloaded), exported with `dynamo=True` at its
default opset with the weights as external data, compiled by kiln with its compile-time check against ONNX Runtime
on, then run on a padded attention mask beside ONNX Runtime.

    python benchmarks/dynamo_exports.py [--models bert,distilbert,gpt2] [--seq 64] [--keep FOLDER]

Needs torch and transformers (`pip install -e '.[bench]'`). Prints, per model, the opset and files written, kiln's
compile-time check and the largest difference on the padded input over ONNX Runtime's largest output; a model the
exporter cannot export is reported as such. Exits 1 if kiln refuses a model or strays past 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # of the largest reference output
TEXT_MODELS = ("bert", "distilbert", "gpt2")


def _check(name: str, seq: int, folder: Path) -> bool:
    import onnx
    import torch

    import kiln
    from kiln.errors import KilnError
    from kiln.testing.reference import onnxruntime_outputs

    from transformer_models import _inputs, _network  # the same models and padded inputs as that benchmark

    network, names = _network(name)
    network.eval()
    feed = _inputs(name, network, seq, batch=1)
    path = folder / f"{name}.onnx"
    started = time.perf_counter()
    try:
        program = torch.onnx.export(network, tuple(torch.from_numpy(feed[n]) for n in names), dynamo=True,
                                    input_names=list(names), external_data=True)
    except Exception as exc:  # noqa: BLE001 - the exporter's own failure, reported as such
        print(f"{name}: torch's dynamo exporter fails: {str(exc).strip().splitlines()[0][:200]}")
        return True
    program.save(str(path), external_data=True)
    opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}.onnx"))
    print(f"{name}: exported in {time.perf_counter() - started:.0f} s, opset {opset}, files {', '.join(files)}")
    started = time.perf_counter()
    try:
        result = kiln.compile(path, kiln.CompileOptions(kiln.target("host"), folder / f"{name}.kiln",
                                                        kiln.ImportOptions({n: feed[n].shape for n in names})))
    except KilnError as exc:
        print(f"{name}: kiln refuses it: {exc}")
        return False
    check = result.manifest.verification
    print(f"{name}: compiled in {time.perf_counter() - started:.0f} s; compile-time check {check.difference:.1e} "
          f"{check.unit} (tolerance {check.tolerance:g})")
    got = list(kiln.load(result.path).run(feed).values())
    expected = onnxruntime_outputs(path, feed)
    error = max(float(np.abs(g - e).max() / np.abs(e).max()) for g, e in zip(got, expected))
    print(f"{name}: padded attention mask, largest difference {error:.1e} of ONNX Runtime's largest output")
    return error <= TOLERANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(TEXT_MODELS))
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="write the exports and artifacts here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = [_check(name, args.seq, folder) for name in args.models.split(",")]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
