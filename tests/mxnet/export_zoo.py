"""Export every Gluon model zoo vision model with real MXNet, plus the outputs MXNet computes.

Runs inside the side virtualenv (tests/mxnet/make_venv.sh), never in kiln's own environment:

    .venv-mxnet/bin/python tests/mxnet/export_zoo.py OUT_DIR [MODEL ...]

For each model, OUT_DIR/MODEL/ receives model-symbol.json and model-0000.params (Gluon `export`
of the hybridized, randomly initialised network), reference.npz (`data`, the fixed input, and
`output`, what MXNet computes on it) and meta.json (input shape, MXNet version).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import vision
from mxnet.gluon.model_zoo.vision import resnet

SEED = 0
# BatchNorm statistics come from a random batch; small inputs leave 1x1 maps in the last stages, so
# they need more samples for the statistics to be representative.
CALIBRATION_BATCH = {"small": 32, "large": 4}
RESIDUAL_DAMPING = 0.1
MIN_RUNNING_VAR = 0.05
# The models and input sides, shared with the test that reads the exports.
INPUT_SIDES = json.loads((Path(__file__).with_name("zoo_models.json")).read_text())["input_sides"]


def randomise_parameters(net: mx.gluon.Block, rng: np.random.Generator) -> None:
    """Give every BatchNorm scale and shift and every bias a value, so the test exercises them."""
    for name, param in net.collect_params().items():
        if name.endswith("gamma"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
        elif name.endswith(("beta", "bias")):
            param.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, param.shape).astype(np.float32)))


def damp_residual_branches(net: mx.gluon.Block) -> None:
    """Scale each ResNet block's residual branch down tenfold (as the zero-gamma initialisation of ResNet
    training does), so float32 rounding does not grow past the test's tolerance over 50 blocks."""

    def damp(block: mx.gluon.Block) -> None:
        if isinstance(block, (resnet.BasicBlockV1, resnet.BottleneckV1)):
            last = block.body[len(block.body) - 1].gamma  # the branch ends in a BatchNorm
        elif isinstance(block, (resnet.BasicBlockV2, resnet.BottleneckV2)):
            last = getattr(block, "conv3", block.conv2).weight  # ... or in a convolution
        else:
            return
        last.set_data(last.data() * RESIDUAL_DAMPING)

    net.apply(damp)


def calibrate_batch_norms(net: mx.gluon.Block, batch: np.ndarray) -> None:
    """Set BatchNorm running statistics to those of a random batch, so activations keep their scale
    through 150 layers (with arbitrary statistics they overflow float32 in the deep ResNets)."""
    net.apply(lambda block: block._kwargs.update(momentum=0.0) if isinstance(block, nn.BatchNorm) else None)
    with mx.autograd.record(train_mode=True):
        output = net(mx.nd.array(batch))
    output.backward()  # MXNet updates the running statistics in the backward pass
    for name, param in net.collect_params().items():
        if name.endswith("running_var"):  # a channel that barely varies would amplify float32 rounding
            param.set_data(mx.nd.maximum(param.data(), MIN_RUNNING_VAR))


def export(name: str, out_dir: Path) -> None:
    mx.random.seed(SEED)
    rng = np.random.default_rng(SEED)
    side = INPUT_SIDES[name]
    data = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
    net = vision.get_model(name)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    net(mx.nd.array(data))  # deferred initialisation needs one forward pass
    randomise_parameters(net, rng)
    damp_residual_branches(net)
    batch = CALIBRATION_BATCH["small" if side < 100 else "large"]
    calibrate_batch_norms(net, rng.uniform(-1, 1, (batch, 3, side, side)).astype(np.float32))
    net.hybridize()
    output = net(mx.nd.array(data)).asnumpy()
    model_dir = out_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    net.export(str(model_dir / "model"))
    np.savez(model_dir / "reference.npz", data=data, output=output)
    (model_dir / "meta.json").write_text(json.dumps({"input_shape": list(data.shape),
                                                     "mxnet_version": mx.__version__}))


def main(argv: list[str], export=export, models=INPUT_SIDES) -> None:
    """OUT_DIR [MODEL ...]: export each model (all of `models` when none is named) with `export`."""
    warnings.filterwarnings("ignore")
    out_dir = Path(argv[0])
    for name in argv[1:] or models:
        export(name, out_dir)
        print(f"exported {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
