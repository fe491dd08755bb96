"""Export one small GluonCV model per family with real MXNet, plus the outputs MXNet computes.

Runs inside the side virtualenv (tests/mxnet/make_venv.sh), never in kiln's own environment:

    .venv-mxnet/bin/python tests/mxnet/export_gluoncv.py OUT_DIR [MODEL[:HxW] ...]

The models and their input sides are in gluoncv_models.json; MODEL:HxW exports at another input size (any GluonCV
zoo model, those outside the table too, e.g. resnet50_v1d:224x224; segmentation models take square sizes only).
Each is built with pretrained=False (nothing is downloaded), given seeded random weights, and exported from its
hybridized form; OUT_DIR/MODEL/ receives model-symbol.json, model-0000.params, reference.npz (`data`, the fixed
input, and `output0`, `output1`, ..., what MXNet computes on it) and meta.json (input shape, output count, MXNet and
GluonCV versions).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import mxnet as mx
import numpy as np
from gluoncv import model_zoo
from gluoncv.model_zoo.resnetv1b import BasicBlockV1b, BottleneckV1b

from export_zoo import MIN_RUNNING_VAR, RESIDUAL_DAMPING, SEED, main, randomise_parameters

MODELS = json.loads((Path(__file__).with_name("gluoncv_models.json")).read_text())["models"]
CALIBRATION_IMAGES = 4


def build(name: str, side: int) -> mx.gluon.HybridBlock:
    """The zoo's network, sized for the reduced input (`side`: its height)."""
    if name.startswith(("fcn_", "psp_", "deeplab_")):  # the segmentation models
        # These resize their scores (and DeepLab its pooled features) to crop_size, not to their input's size;
        # the auxiliary head serves training only.
        return model_zoo.get_model(name, pretrained=False, pretrained_base=False, crop_size=side, aux=False)
    try:
        net = model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    except TypeError as exc:  # classifiers have no base network; they pass the keyword on to HybridBlock, which refuses
        if "pretrained_base" not in str(exc):
            raise
        net = model_zoo.get_model(name, pretrained=False)
    if name.startswith("faster_rcnn_"):
        # 6000 proposals cut to 300 would run the last ResNet stage 300 times; fewer keep the export and
        # the build quick (the predefined model passes these to its constructor itself, so set them after).
        net._rpn_test_post_nms = net.rpn._test_post_nms = 16
        net.rpn._test_pre_nms = 200
    return net


def initialise(net: mx.gluon.Block, data: np.ndarray, rng: np.random.Generator) -> None:
    """Seeded Xavier weights, and random BatchNorm scales, shifts and biases."""
    for name, param in net.collect_params().items():
        # BatchNorms built from symbols (GluonCV's feature extractors) name no initialiser of their own,
        # and Xavier refuses vectors.
        if param.init is None and name.endswith(("gamma", "running_var", "moving_var")):
            param.init = mx.init.One()
        elif param.init is None and name.endswith(("beta", "bias", "running_mean", "moving_mean")):
            param.init = mx.init.Zero()
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    net(mx.nd.array(data))  # deferred initialisation needs one forward pass
    randomise_parameters(net, rng)


def damp_residual_branches(net: mx.gluon.Block) -> None:
    """Scale each ResNet V1b block's residual branch down tenfold, as export_zoo.damp_residual_branches does for
    the Gluon zoo's ResNets: in a random network float32 rounding grows from block to block, past the test's
    tolerance after FCN's 16 bottlenecks."""

    def damp(block: mx.gluon.Block) -> None:
        if isinstance(block, (BasicBlockV1b, BottleneckV1b)):
            last = getattr(block, "bn3", block.bn2).gamma  # the branch ends in a BatchNorm
            last.set_data(last.data() * RESIDUAL_DAMPING)

    net.apply(damp)


def calibrate_batch_norms(net: mx.gluon.HybridBlock, symbol: mx.sym.Symbol, images: np.ndarray) -> None:
    """Set each BatchNorm's moving statistics to those of its input on `images`, in graph order, so activations
    keep their scale through the network. Statistics come from inference-mode runs of the exported graph cut at
    each BatchNorm's input: training-mode forward passes would need the detectors' training targets, and the
    BatchNorms inside GluonCV's symbol-built feature extractors are no Gluon blocks to hook."""
    params = net.collect_params()
    nodes = json.loads(symbol.tojson())["nodes"]
    internals = symbol.get_internals()
    index = {name: i for i, name in enumerate(internals.list_outputs())}
    for node in nodes:
        if node["op"] != "BatchNorm":
            continue
        source, output, _ = node["inputs"][0]
        producer = nodes[source]
        name = producer["name"] if producer["op"] == "null" else f"{producer['name']}_output"
        if output:
            name = f"{producer['name']}_output{output}"
        cut = mx.gluon.SymbolBlock(internals[index[name]], [mx.sym.var("data")], params=params)
        x = np.concatenate([cut(mx.nd.array(image[None])).asnumpy() for image in images])
        axis = int(node.get("attrs", {}).get("axis", 1)) % x.ndim
        axes = tuple(i for i in range(x.ndim) if i != axis)
        mean, var = (nodes[i]["name"] for i, _, _ in node["inputs"][3:5])
        params[mean].set_data(mx.nd.array(x.mean(axis=axes)))
        params[var].set_data(mx.nd.array(np.maximum(x.var(axis=axes), MIN_RUNNING_VAR)))


def export(spec: str, out_dir: Path) -> None:
    """Export MODEL (at its side in gluoncv_models.json) or MODEL:HxW into OUT_DIR/MODEL/."""
    name, _, size = spec.partition(":")
    height, width = map(int, size.split("x")) if size else (MODELS[name]["side"],) * 2
    mx.random.seed(SEED)
    rng = np.random.default_rng(SEED)
    data = rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    net = build(name, height)
    initialise(net, data, rng)
    damp_residual_branches(net)
    net.hybridize()
    model_dir = out_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(model_dir / "model")
    net(mx.nd.array(data))
    net.export(prefix)
    calibrate_batch_norms(net, mx.sym.load(f"{prefix}-symbol.json"),
                          rng.uniform(-1, 1, (CALIBRATION_IMAGES, 3, height, width)).astype(np.float32))
    outputs = net(mx.nd.array(data))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    net.export(prefix)
    np.savez(model_dir / "reference.npz", data=data, **{f"output{i}": out.asnumpy() for i, out in enumerate(outputs)})
    (model_dir / "meta.json").write_text(json.dumps({"input_shape": list(data.shape), "outputs": len(outputs),
                                                     "mxnet_version": mx.__version__,
                                                     # the 0.10.5 wheel's gluoncv.__version__ says 0.11.0
                                                     "gluoncv_version": version("gluoncv")}))


if __name__ == "__main__":
    main(sys.argv[1:], export, MODELS)
