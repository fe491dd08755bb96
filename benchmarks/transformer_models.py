"""kiln on CPU against ONNX Runtime on transformers and modern convnets: BERT-base, DistilBERT, GPT-2, ViT-B/16,
ConvNeXt-T, EfficientNet-B0 and MobileNetV3-small, each with random weights (nothing is downloaded): the first six
built from their `transformers` configs, MobileNetV3-small (which `transformers` lacks) as torchvision's
`mobilenet_v3_small` defined here in plain torch. Each is exported with PyTorch's TorchScript exporter (opset 17,
static shapes at the --batch given, 1 by default) and compiled by kiln for this CPU.

    python benchmarks/transformer_models.py [--threads 2] [--seconds 5] [--seq 128] [--batch 1] [--int8]
                                            [--models bert,distilbert,gpt2,vit,convnext,efficientnet,mobilenetv3]
                                            [--keep FOLDER]

Needs torch and transformers: `pip install -e '.[bench]'` (it pins torch==2.13.0, the CPU wheel).
Prints median latencies and their ratio (below 1: kiln is faster), all engines measured interleaved in this
one process (ONNX Runtime's thread spinning off), plus export and compile times. Exits with status 1 if an
FP32 output strays from ONNX Runtime's by more than 1e-4 of its largest value, with status 2 if torch or
transformers is missing.

With --int8, kiln also compiles each model to INT8 (calibrated on CALIBRATION_SAMPLES random inputs drawn like the
timed one, the compile-time check off: see the README on deep INT8 models) and times it beside ONNX Runtime on
kiln's QDQ model and on ONNX Runtime's own `quantize_dynamic` model (what its users run for BERT on CPU). Their
agreement with the FP32 output is printed as cosine similarity.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # of the largest reference output
MODELS = ("bert", "distilbert", "gpt2", "vit", "convnext", "efficientnet", "mobilenetv3")
IMAGE_MODELS = frozenset({"vit", "convnext", "efficientnet", "mobilenetv3"})
IMAGE_SIZE = 224
CALIBRATION_SAMPLES = 8
# torchvision's mobilenet_v3_small blocks: kernel, expanded channels, output channels, squeeze-excitation,
# hardswish (else ReLU), stride
MOBILENET_V3_SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
                      (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
                      (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
                      (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))


def _require_torch() -> None:
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"benchmarks/transformer_models.py needs {' and '.join(missing)}: pip install -e '.[bench]' "
              "(or pip install torch==2.13.0 transformers; torch 2.13.0 is the CPU wheel)", file=sys.stderr)
        sys.exit(2)


def _network(name: str):
    """(the model with random weights, its input names)."""
    import transformers as hf

    if name == "bert":
        return hf.BertModel(hf.BertConfig()), ("input_ids", "attention_mask", "token_type_ids")
    if name == "distilbert":
        return hf.DistilBertModel(hf.DistilBertConfig()), ("input_ids", "attention_mask")
    if name == "gpt2":
        return hf.GPT2Model(hf.GPT2Config(use_cache=False)), ("input_ids", "attention_mask")
    if name == "vit":
        return hf.ViTModel(hf.ViTConfig(image_size=IMAGE_SIZE), add_pooling_layer=False), ("pixel_values",)
    if name == "convnext":  # the default config is ConvNeXt-T
        return hf.ConvNextModel(hf.ConvNextConfig(image_size=IMAGE_SIZE)), ("pixel_values",)
    if name == "efficientnet":  # the default config is B7
        config = hf.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=IMAGE_SIZE,
                                       hidden_dim=1280, dropout_rate=0.2)
        return hf.EfficientNetModel(config), ("pixel_values",)
    if name == "mobilenetv3":
        return _mobilenet_v3_small(), ("pixel_values",)
    raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def _make_divisible(channels: float, divisor: int = 8) -> int:
    """torchvision's rounding of a channel count to a multiple of `divisor`, never more than 10% below it."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _mobilenet_v3_small(classes: int = 1000):
    """torchvision's mobilenet_v3_small (width 1.0) in plain torch, called like a `transformers` model: torchvision's
    wheel is a CUDA build whose C extension does not load beside CPU torch."""
    from torch import nn

    def conv(inputs: int, outputs: int, kernel: int, activation, stride: int = 1, groups: int = 1):
        layers = [nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(outputs, eps=0.001, momentum=0.01)]
        return nn.Sequential(*layers, *([activation()] if activation else []))

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            squeezed = _make_divisible(channels // 4)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.ReLU(),
                                      nn.Conv2d(squeezed, channels, 1), nn.Hardsigmoid())

        def forward(self, x):
            return x * self.gate(x)

    class InvertedResidual(nn.Module):
        def __init__(self, inputs: int, kernel: int, expanded: int, outputs: int, squeeze: bool, hardswish: bool,
                     stride: int):
            super().__init__()
            activation = nn.Hardswish if hardswish else nn.ReLU
            layers = [conv(inputs, expanded, 1, activation)] if expanded != inputs else []
            layers.append(conv(expanded, expanded, kernel, activation, stride, groups=expanded))
            layers += [SqueezeExcitation(expanded)] if squeeze else []
            self.block = nn.Sequential(*layers, conv(expanded, outputs, 1, None))
            self.residual = stride == 1 and inputs == outputs

        def forward(self, x):
            return x + self.block(x) if self.residual else self.block(x)

    class MobileNetV3Small(nn.Module):
        def __init__(self):
            super().__init__()
            channels = _make_divisible(16)
            layers = [conv(3, channels, 3, nn.Hardswish, stride=2)]
            for kernel, expanded, outputs, squeeze, hardswish, stride in MOBILENET_V3_SMALL:
                outputs = _make_divisible(outputs)
                layers.append(InvertedResidual(channels, kernel, _make_divisible(expanded), outputs, squeeze,
                                               hardswish, stride))
                channels = outputs
            self.features = nn.Sequential(*layers, conv(channels, 6 * channels, 1, nn.Hardswish))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(6 * channels, _make_divisible(1024)), nn.Hardswish(),
                                            nn.Dropout(0.2), nn.Linear(_make_divisible(1024), classes))

        def forward(self, pixel_values, return_dict: bool = False):
            return (self.classifier(self.avgpool(self.features(pixel_values)).flatten(1)),)

    return MobileNetV3Small()


def _inputs(name: str, model, seq: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name in IMAGE_MODELS:
        return {"pixel_values": rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)}
    mask = np.ones((batch, seq), np.int64)
    mask[:, -seq // 4:] = 0  # padding: the attention mask matters
    feed = {"input_ids": rng.integers(0, model.config.vocab_size, (batch, seq)).astype(np.int64),
            "attention_mask": mask}
    if name == "bert":
        feed["token_type_ids"] = np.tile((np.arange(seq) >= seq // 2).astype(np.int64), (batch, 1))
    return feed


def _set_batch_norm_statistics(network, samples: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> None:
    """BatchNorm running statistics averaged over train-mode passes on `samples`: with the initial ones (mean 0,
    variance 1) EfficientNet's activations grow layer by layer and its output is meaningless."""
    import torch

    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes
    network.train()
    with torch.no_grad():
        for sample in samples:
            network(**{n: torch.from_numpy(sample[n]) for n in names})


def _export(name: str, seq: int, batch: int, folder: Path) -> tuple[Path, dict[str, np.ndarray], Path, float]:
    """The ONNX file of `name` at `batch` (its first output: the last hidden state, MobileNetV3's logits), its inputs,
    calibration data (an .npz of CALIBRATION_SAMPLES other inputs) and the seconds the export took."""
    import torch

    torch.manual_seed(0)
    started = time.perf_counter()
    network, names = _network(name)
    feed = _inputs(name, network, seq, batch)
    samples = [_inputs(name, network, seq, batch, seed) for seed in range(1, CALIBRATION_SAMPLES + 1)]
    _set_batch_norm_statistics(network, samples, names)
    network.eval()

    class FirstOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, *args):
            return self.network(**dict(zip(names, args)), return_dict=False)[0]

    path = folder / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(FirstOutput().eval(), tuple(torch.from_numpy(feed[n]) for n in names), str(path),
                          input_names=list(names), output_names=["last_hidden_state"], opset_version=17, dynamo=False)
    calibration = folder / f"{name}_calib.npz"
    np.savez(calibration, **{n: np.concatenate([sample[n] for sample in samples]) for n in names})
    return path, feed, calibration, time.perf_counter() - started


def _row(name: str, args, folder: Path) -> dict:
    import kiln
    from kiln.bench import BenchOptions, measure, onnxruntime_runner
    from kiln.testing.reference import compile_to

    path, feed, calibration, export_s = _export(name, args.seq, args.batch, folder)
    row = {"model": name, "export_s": export_s}
    shapes = {k: v.shape for k, v in feed.items()}
    started = time.perf_counter()
    artifact = compile_to(path, folder / f"{name}.kiln", args.target, shapes=shapes)
    row["compile_s"] = time.perf_counter() - started
    predictor = kiln.load(artifact, threads=args.threads)
    runners = {"kiln": lambda inputs: list(predictor.run(inputs).values()),
               "onnxruntime": onnxruntime_runner(path, args.threads)}
    if args.int8:
        runners.update(_int8_runners(name, path, calibration, shapes, args, folder, row))
    timings, outputs = measure(runners, feed, BenchOptions(threads=args.threads, seconds=args.seconds))
    for key in runners:
        row[f"{key}_ms"] = timings[key].median_ms
    reference = outputs["onnxruntime"][0]
    row["max_rel_err"] = float(np.abs(outputs["kiln"][0] - reference).max() / np.abs(reference).max())
    for key in INT8_ENGINES if args.int8 else ():
        row[f"{key}_cosine"] = _cosine(outputs[key][0], reference)
    return row


INT8_ENGINES = ("kiln_int8", "onnxruntime_qdq", "onnxruntime_dynamic")


def _int8_runners(name: str, path: Path, calibration: Path, shapes: dict, args, folder: Path, row: dict) -> dict:
    """kiln's INT8 artifact, ONNX Runtime on its QDQ model and on ONNX Runtime's quantize_dynamic model."""
    import kiln
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kiln.bench import onnxruntime_runner
    from kiln.compiler import artifact as artifacts
    from kiln.compiler.manifest import Precision
    from kiln.testing.reference import compile_to

    started = time.perf_counter()
    artifact = compile_to(path, folder / f"{name}_int8.kiln", args.target, shapes=shapes, precision=Precision.INT8,
                          calib=calibration, verify=False)
    row["int8_compile_s"] = time.perf_counter() - started
    predictor = kiln.load(artifact, threads=args.threads)
    qdq = artifacts.verified_file(artifact, artifacts.read_manifest(artifact).files["int8_onnx"])
    dynamic = folder / f"{name}_dynamic.onnx"
    quantize_dynamic(path, dynamic, weight_type=QuantType.QInt8)
    return {"kiln_int8": lambda inputs: list(predictor.run(inputs).values()),
            "onnxruntime_qdq": onnxruntime_runner(qdq, args.threads),
            "onnxruntime_dynamic": onnxruntime_runner(dynamic, args.threads)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _print(rows: list[dict], args) -> None:
    print(f"\nkiln FP32 ({args.target}) vs ONNX Runtime FP32, batch {args.batch}, sequence {args.seq} "
          f"(ViT: 197 tokens; convnets: {IMAGE_SIZE}x{IMAGE_SIZE}), {args.threads} threads, "
          f"medians over >= {args.seconds:.0f} s interleaved")
    print(f"{'model':12} {'ORT ms':>9} {'kiln ms':>9} {'ratio':>6} {'export s':>8} {'compile s':>9} "
          f"{'max rel err':>11}")
    for r in rows:
        print(f"{r['model']:12} {r['onnxruntime_ms']:9.2f} {r['kiln_ms']:9.2f} "
              f"{r['kiln_ms'] / r['onnxruntime_ms']:6.2f} {r['export_s']:8.1f} {r['compile_s']:9.1f} "
              f"{r['max_rel_err']:11.1e}")
    print("ratio = kiln median / ONNX Runtime median")
    if not args.int8:
        return
    print("\nINT8 in the same run: kiln INT8; ONNX Runtime on kiln's QDQ model (ORT QDQ) and on its quantize_dynamic "
          "model (ORT dyn); cos = cosine similarity of the output to ONNX Runtime's FP32 output")
    print(f"{'model':12} {'kiln ms':>9} {'/kiln FP32':>10} {'ORT QDQ ms':>10} {'ORT dyn ms':>10} {'/ORT dyn':>8} "
          f"{'kiln cos':>8} {'QDQ cos':>8} {'dyn cos':>8} {'compile s':>9}")
    for r in rows:
        print(f"{r['model']:12} {r['kiln_int8_ms']:9.2f} {r['kiln_int8_ms'] / r['kiln_ms']:10.2f} "
              f"{r['onnxruntime_qdq_ms']:10.2f} {r['onnxruntime_dynamic_ms']:10.2f} "
              f"{r['kiln_int8_ms'] / r['onnxruntime_dynamic_ms']:8.2f} {r['kiln_int8_cosine']:8.5f} "
              f"{r['onnxruntime_qdq_cosine']:8.5f} {r['onnxruntime_dynamic_cosine']:8.5f} {r['int8_compile_s']:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host", help="kiln's target preset (host: this CPU's instruction sets)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the text models")
    parser.add_argument("--batch", type=int, default=1, help="batch size every model is exported and timed at")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--int8", action="store_true", help="also kiln INT8 beside ONNX Runtime's INT8 models")
    parser.add_argument("--keep", type=Path, help="write the ONNX files and artifacts here (e.g. for kiln bench "
                                                  "--profile), not in a temporary folder")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    _require_torch()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows.append(_row(name, args, folder))
            print(f"done {name}", file=sys.stderr, flush=True)
    _print(rows, args)
    mismatches = [f"{r['model']}: max rel err {r['max_rel_err']:.1e} > {TOLERANCE}" for r in rows
                  if r["max_rel_err"] > TOLERANCE]
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
