"""One artifact for a batch range against fixed-batch artifacts and ONNX Runtime: ResNet-18 (random weights)
compiled once for batches 1-64 and once per batch size measured, all timed interleaved in this process.

    python benchmarks/dynamic_batch.py [--batches 1,3,8,17,64] [--threads 2] [--seconds 3] [--model resnet18]

Prints per batch: the medians of the range artifact, the fixed artifact for exactly that batch and ONNX
Runtime, the range/fixed ratio (goal: <= 1.10) and the libraries' sizes (goal: the range artifact's at most 3x
a fixed one's). Exits with status 1 if an output strays from ONNX Runtime's by more than 1e-3 of the largest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

import kiln
from kiln.bench import random_inputs, range_against_fixed
from kiln.compiler.artifact import read_manifest
from kiln.testing.models import MODELS


def _compile(model: Path, output: Path, shape: str, target: str) -> Path:
    options = kiln.CompileOptions(kiln.target(target), output, kiln.ImportOptions({"input": shape}), verify=False)
    return kiln.compile(model, options).path


def _library_bytes(artifact: Path) -> int:
    return (artifact / read_manifest(artifact).library.file).stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,3,8,17,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--target", default="x86-64")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    from kiln.compiler.frontends.options import parse_shape

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / f"{args.model}.onnx"
        proto = MODELS[args.model](1)
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        onnx.save(proto, str(model))
        dims = "x".join(str(d.dim_value) for d in proto.graph.input[0].type.tensor_type.shape.dim[1:])
        print(f"compiling {args.model} for batches 1-{max(batches)} and for each of {batches} ...", file=sys.stderr)
        ranged = _compile(model, folder / "range.kiln", parse_shape(f"1-{max(batches)}x{dims}"), args.target)
        fixed = {b: _compile(model, folder / f"b{b}.kiln", parse_shape(f"{b}x{dims}"), args.target) for b in batches}
        dynamic = kiln.load(ranged, threads=args.threads)
        print(f"\n{args.model}, {args.target}, {args.threads} threads: range artifact (1-{max(batches)}) vs a fixed "
              f"artifact per batch vs ONNX Runtime, medians over >= {args.seconds:.0f} s interleaved")
        print(f"{'batch':>5} {'range ms':>9} {'fixed ms':>9} {'ORT ms':>9} {'range/fixed':>11} {'range/ORT':>9}")
        failed = False
        for batch in batches:
            predictor = kiln.load(fixed[batch], threads=args.threads)
            median, error = range_against_fixed(dynamic, predictor, model, random_inputs(predictor.inputs, batch),
                                                args.threads, args.seconds)
            failed |= error > 1e-3
            print(f"{batch:5d} {median['range']:9.2f} {median['fixed']:9.2f} {median['onnxruntime']:9.2f} "
                  f"{median['range'] / median['fixed']:11.2f} {median['range'] / median['onnxruntime']:9.2f}")
        sizes = {b: _library_bytes(a) for b, a in fixed.items()}
        print(f"libraries: range {_library_bytes(ranged) / 1e6:.1f} MB, fixed {min(sizes.values()) / 1e6:.1f}-"
              f"{max(sizes.values()) / 1e6:.1f} MB: {_library_bytes(ranged) / max(sizes.values()):.2f}x the largest "
              f"fixed one (goal: range/fixed <= 1.10 at every batch, size <= 3x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
