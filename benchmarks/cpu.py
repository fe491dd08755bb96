"""kiln on CPU against ONNX Runtime: ResNet-18, MobileNetV2 (random weights) and the example CNN, batch 1
and 8, one thread count. FP32 with default schedules and, with --trials N, tuned ones (per model and
batch); INT8 (unless --no-int8): kiln's integer kernels against ONNX Runtime on the same QDQ model.

    python benchmarks/cpu.py [--threads 2] [--trials 64] [--seconds 5] [--models resnet18,mobilenetv2,digits_cnn]

Prints tables of median latencies and ratios (below 1: kiln is faster), all engines measured
interleaved in this one process so they see the same machine load, plus compile and tuning times.
INT8 models are calibrated on 16 random inputs (the example CNN on its calibration digits).
Exits with status 1 if an output strays from ONNX Runtime's: FP32 by more than 1e-3 of the largest
output, INT8 by more than one output quantization step.
With --target cuda-smXX (benchmarks/gpu_check.sh does this on a GPU machine) kiln runs on that GPU,
timed with the copies to and from it, and ONNX Runtime on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from kiln.testing.models import MODELS
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN
from kiln.testing.reference import compile_to, qdq_output_scale


def _model(name: str, batch: int, folder: Path) -> Path:
    path = folder / f"{name}_b{batch}.onnx"
    if name == "digits_cnn":
        model = onnx.load(str(DIGITS_CNN))
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    else:
        model = MODELS[name](batch)
    onnx.save(model, str(path))
    return path


FP32_TOLERANCE = 1e-3  # of the largest reference output
INT8_TOLERANCE = 1.001  # output quantization steps


def _compile(path: Path, output: Path, target: str, records: Path | None, calib: Path | None = None) -> float:
    """Seconds to compile `path` (INT8 when given calibration data; its ranges cached beside the artifact)."""
    from kiln.compiler.manifest import Precision
    from kiln.quantization.config import QuantizeOptions

    started = time.perf_counter()
    compile_to(path, output, target, records=records, calib=calib,
               precision=Precision.INT8 if calib else Precision.FP32,
               quantize=QuantizeOptions(cache_dir=str(output.parent / "calib-cache")))
    return time.perf_counter() - started


def _calibration(name: str, model: onnx.ModelProto, folder: Path) -> Path:
    if name == "digits_cnn":
        return DIGITS_CALIB
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    path = folder / f"{name}_calib.npz"
    np.savez(path, input=np.random.default_rng(0).random((16, *dims[1:]), dtype=np.float32))
    return path


def _row(name: str, batch: int, args, folder: Path) -> dict:
    import kiln
    from kiln.bench import BenchOptions, measure, onnxruntime_runner, random_inputs

    path = _model(name, batch, folder)
    row = {"model": name, "batch": batch,
           "compile_s": _compile(path, folder / f"{path.stem}.kiln", args.target, None)}
    artifacts = {"kiln": folder / f"{path.stem}.kiln"}
    if args.trials:
        records = folder / f"{path.stem}.records"
        report = kiln.tune(path, records, target=kiln.target(args.target), trials=args.trials)
        row["tune_s"], row["improved"], row["tasks"] = report.seconds, report.improved, report.tasks
        artifacts["tuned"] = folder / f"{path.stem}.tuned.kiln"
        row["tuned_compile_s"] = _compile(path, artifacts["tuned"], args.target, records)
    if args.int8:
        artifacts["int8"] = folder / f"{path.stem}.int8.kiln"
        calib = _calibration(name, onnx.load(str(path)), folder)
        row["int8_compile_s"] = _compile(path, artifacts["int8"], args.target, None, calib)
    predictors = {key: kiln.load(artifact, threads=args.threads) for key, artifact in artifacts.items()}
    runners = {key: (lambda feed, p=p: list(p.run(feed).values())) for key, p in predictors.items()}
    runners["onnxruntime"] = onnxruntime_runner(path, args.threads)
    if args.int8:
        runners["onnxruntime_int8"] = onnxruntime_runner(artifacts["int8"] / "model.int8.onnx", args.threads)
    inputs = random_inputs(predictors["kiln"].inputs, batch)
    timings, outputs = measure(runners, inputs, BenchOptions(threads=args.threads, seconds=args.seconds))
    for key in runners:
        row[f"{key}_ms"] = timings[key].median_ms
    reference = outputs["onnxruntime"][0]
    row["max_rel_err"] = max(float(np.abs(outputs[key][0] - reference).max() / np.abs(reference).max())
                             for key in artifacts if key != "int8")
    if args.int8:
        row["int8_steps"] = float(np.abs(outputs["int8"][0] - outputs["onnxruntime_int8"][0]).max()
                                  / qdq_output_scale(artifacts["int8"]))
        row["int8_kernels"] = json.loads((artifacts["int8"] / "manifest.json").read_text())["integer_kernels"]
    return row


def _print(rows: list[dict], args) -> None:
    tuned = bool(args.trials)
    print(f"\nkiln FP32 ({args.target}) vs ONNX Runtime FP32 (CPU), {args.threads} threads, "
          f"medians over >= {args.seconds:.0f} s interleaved"
          + (f"; tuned: {args.trials} trials per model and batch" if tuned else ""))
    header = f"{'model':12} {'batch':>5} {'ORT ms':>9} {'kiln ms':>9} {'ratio':>6} {'compile s':>9}"
    if tuned:
        header += f" {'tuned ms':>9} {'ratio':>6} {'tune s':>7} {'better':>7}"
    print(header + f" {'max rel err':>11}")
    for r in rows:
        line = (f"{r['model']:12} {r['batch']:5d} {r['onnxruntime_ms']:9.2f} {r['kiln_ms']:9.2f} "
                f"{r['kiln_ms'] / r['onnxruntime_ms']:6.2f} {r['compile_s']:9.1f}")
        if tuned:
            line += (f" {r['tuned_ms']:9.2f} {r['tuned_ms'] / r['onnxruntime_ms']:6.2f} {r['tune_s']:7.0f} "
                     f"{r['improved']:>3}/{r['tasks']:<3}")
        print(line + f" {r['max_rel_err']:11.1e}")
    goal = "" if args.target.startswith("cuda") else " (goal on CPU: untuned <= 1.5, tuned <= 1.0)"
    print(f"ratio = kiln median / ONNX Runtime median{goal}; better = kernels where tuning beat the default schedule")
    if args.int8:
        _print_int8(rows, args.target)


def _print_int8(rows: list[dict], target: str) -> None:
    print("\nINT8 (same QDQ model for kiln and ONNX Runtime), same run")
    print(f"{'model':12} {'batch':>5} {'ORT fp32':>9} {'kiln fp32':>9} {'ORT int8':>9} {'kiln int8':>9} "
          f"{'/kiln fp32':>10} {'/ORT int8':>9} {'int8 ops':>8} {'steps':>5}")
    for r in rows:
        kernels = r["int8_kernels"]
        print(f"{r['model']:12} {r['batch']:5d} {r['onnxruntime_ms']:9.2f} {r['kiln_ms']:9.2f} "
              f"{r['onnxruntime_int8_ms']:9.2f} {r['int8_ms']:9.2f} {r['int8_ms'] / r['kiln_ms']:10.2f} "
              f"{r['int8_ms'] / r['onnxruntime_int8_ms']:9.2f} "
              f"{kernels['int8_ops']:>3}/{kernels['int8_ops'] + len(kernels['float_ops']):<4} {r['int8_steps']:5.1f}")
    isa = rows[0]["int8_kernels"]["isa"] if rows else ""
    print(f"int8 ops = quantized convs/matmuls run as integer kernels ({isa}); steps = largest output difference "
          "from ONNX Runtime int8, in output scales")
    if not target.startswith("cuda"):
        print("goal: kiln int8 <= 0.7 x kiln fp32 and < ONNX Runtime int8")


def _mismatches(rows: list[dict]) -> list[str]:
    found = [f"{r['model']} batch {r['batch']}: FP32 max rel err {r['max_rel_err']:.1e} > {FP32_TOLERANCE}"
             for r in rows if r["max_rel_err"] > FP32_TOLERANCE]
    found += [f"{r['model']} batch {r['batch']}: INT8 {r['int8_steps']:.2f} steps from ONNX Runtime"
              for r in rows if r.get("int8_steps", 0) > INT8_TOLERANCE]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host",
                        help="kiln's target: host (this CPU's instruction sets, which ONNX Runtime uses too), another "
                             "preset this machine runs, or cuda-smXX to run kiln on the GPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model and batch (0: no tuning)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model and batch")
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits_cnn")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also compile and measure INT8 (kiln vs ONNX Runtime on the same QDQ model)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(_row(name, batch, args, Path(folder)))
                print(f"done {name} batch {batch}", file=sys.stderr, flush=True)
    _print(rows, args)
    mismatches = _mismatches(rows)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
