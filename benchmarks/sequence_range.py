"""One BERT artifact for a batch and a length range against fixed-shape artifacts and ONNX Runtime: transformers'
BertModel (random weights from its default config, i.e. BERT-base) exported with a free batch and length, compiled
once for batches 1-8 x lengths 16-256 and once per (batch, length) measured, all timed interleaved in this process.

    python benchmarks/sequence_range.py [--points 1x16,1x100,1x128,4x64,8x200,8x256] [--threads 2] [--seconds 3]
                                        [--layers 12]

Needs torch and transformers (pip install -e '.[bench]'). Prints per point: the medians of the range artifact,
the fixed artifact for exactly that shape and ONNX Runtime, the range/fixed ratio (goal: <= 1.10) and the
libraries' sizes (goal: the range artifact's at most 3x a fixed one's). A length between the range's buckets runs
padded to the next one (kiln.compiler.batching), which the ratio shows. Exits with status 1 if an output strays
from ONNX Runtime's by more than 1e-3 of the largest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import kiln
from kiln.bench import range_against_fixed
from kiln.compiler.artifact import read_manifest
from kiln.compiler.frontends.options import parse_shape

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _export(path: Path, layers: int) -> Path:
    import torch
    import transformers as hf

    torch.manual_seed(0)
    network = hf.BertModel(hf.BertConfig(num_hidden_layers=layers)).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, *args):
            return self.network(**dict(zip(NAMES, args)), return_dict=False)[0]

    example = tuple(torch.ones((1, 16), dtype=torch.int64) for _ in NAMES)
    axes = {name: {0: "batch", 1: "length"} for name in (*NAMES, "last_hidden_state")}
    with torch.no_grad():
        torch.onnx.export(LastHiddenState(), example, str(path), input_names=list(NAMES),
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def _feed(batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, 30522, (batch, length)), "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.tile((np.arange(length) >= length // 2).astype(np.int64), (batch, 1))}


def _compile(model: Path, output: Path, dims: str, target: str) -> Path:
    shapes = {name: parse_shape(dims) for name in NAMES}
    return kiln.compile(model, kiln.CompileOptions(kiln.target(target), output, kiln.ImportOptions(shapes))).path


def _library_bytes(artifact: Path) -> int:
    return (artifact / read_manifest(artifact).library.file).stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="1x16,1x100,1x128,4x64,8x200,8x256", help="BATCHxLENGTH, comma-separated")
    parser.add_argument("--range", default="1-8x16-256", dest="ranges")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--target", default="host")
    args = parser.parse_args()
    points = [tuple(int(d) for d in point.split("x")) for point in args.points.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _export(folder / "bert.onnx", args.layers)
        print(f"compiling BERT ({args.layers} layers) for {args.ranges} and for each of {args.points} ...",
              file=sys.stderr)
        ranged = _compile(model, folder / "range.kiln", args.ranges, args.target)
        fixed = {point: _compile(model, folder / f"{point[0]}x{point[1]}.kiln", f"{point[0]}x{point[1]}", args.target)
                 for point in points}
        dynamic = kiln.load(ranged, threads=args.threads)
        print(f"\nBERT ({args.layers} layers), {args.target}, {args.threads} threads: one artifact for {args.ranges} "
              f"vs an artifact per shape vs ONNX Runtime, medians over >= {args.seconds:.0f} s interleaved")
        print(f"{'batch':>5} {'length':>6} {'range ms':>9} {'fixed ms':>9} {'ORT ms':>9} {'range/fixed':>11} "
              f"{'range/ORT':>9}")
        failed = False
        for batch, length in points:
            median, error = range_against_fixed(dynamic, kiln.load(fixed[batch, length], threads=args.threads), model,
                                                _feed(batch, length), args.threads, args.seconds)
            failed |= error > 1e-3
            print(f"{batch:5d} {length:6d} {median['range']:9.2f} {median['fixed']:9.2f} {median['onnxruntime']:9.2f} "
                  f"{median['range'] / median['fixed']:11.2f} {median['range'] / median['onnxruntime']:9.2f}")
        sizes = {point: _library_bytes(artifact) for point, artifact in fixed.items()}
        print(f"libraries: range {_library_bytes(ranged) / 1e6:.1f} MB, fixed {min(sizes.values()) / 1e6:.1f}-"
              f"{max(sizes.values()) / 1e6:.1f} MB: {_library_bytes(ranged) / max(sizes.values()):.2f}x the largest "
              f"fixed one (goal: range/fixed <= 1.10 at every point, size <= 3x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
