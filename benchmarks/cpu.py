"""kiln FP32 on CPU against ONNX Runtime FP32: ResNet-18, MobileNetV2 (random weights) and the example CNN,
batch 1 and 8, one thread count. Default schedules and, with --trials N, tuned ones (per model and batch).

    python benchmarks/cpu.py [--threads 2] [--trials 64] [--seconds 5] [--models resnet18,mobilenetv2,digits_cnn]

Prints a table of median latencies and kiln/ONNX Runtime ratios (below 1: kiln is faster), measured
interleaved in this one process so all engines see the same machine load, plus compile and tuning times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import cnn_models  # noqa: E402  (tests/cnn_models.py: the model builders the schedule tests use too)

DIGITS = REPO / "examples" / "digits_cnn" / "digits_cnn.onnx"


def _model(name: str, batch: int, folder: Path) -> Path:
    path = folder / f"{name}_b{batch}.onnx"
    if name == "digits_cnn":
        model = onnx.load(str(DIGITS))
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    else:
        model = cnn_models.MODELS[name](batch)
    onnx.save(model, str(path))
    return path


def _compile(path: Path, output: Path, records: Path | None) -> float:
    from kiln.compiler.frontends import ImportOptions
    from kiln.compiler.pipeline import CompileOptions, compile_model
    from kiln.targets import resolve

    started = time.perf_counter()
    compile_model(path, CompileOptions(resolve("x86-64"), output, ImportOptions(), records=records))
    return time.perf_counter() - started


def _row(name: str, batch: int, args, folder: Path) -> dict:
    import kiln
    from kiln.bench import BenchOptions, measure, onnxruntime_runner, random_inputs
    from kiln.compiler.backends.tvm.tuning import tune_model
    from kiln.compiler.frontends import ImportOptions, load_graph
    from kiln.targets import resolve

    path = _model(name, batch, folder)
    row = {"model": name, "batch": batch, "compile_s": _compile(path, folder / f"{path.stem}.kiln", None)}
    artifacts = {"kiln": folder / f"{path.stem}.kiln"}
    if args.trials:
        records = folder / f"{path.stem}.records"
        report = tune_model(load_graph(path, ImportOptions()), resolve("x86-64"), records, args.trials,
                            lambda done, total: None)
        row["tune_s"], row["improved"], row["tasks"] = report.seconds, report.improved, report.tasks
        artifacts["tuned"] = folder / f"{path.stem}.tuned.kiln"
        row["tuned_compile_s"] = _compile(path, artifacts["tuned"], records)
    predictors = {key: kiln.load(artifact, threads=args.threads) for key, artifact in artifacts.items()}
    runners = {key: (lambda feed, p=p: list(p.run(feed).values())) for key, p in predictors.items()}
    runners["onnxruntime"] = onnxruntime_runner(path, args.threads)
    inputs = random_inputs(predictors["kiln"].inputs, batch)
    timings, outputs = measure(runners, inputs, BenchOptions(threads=args.threads, seconds=args.seconds))
    for key in runners:
        row[f"{key}_ms"] = timings[key].median_ms
    reference = outputs["onnxruntime"][0]
    row["max_rel_err"] = max(float(np.abs(outputs[key][0] - reference).max() / np.abs(reference).max())
                             for key in artifacts)
    return row


def _print(rows: list[dict], args) -> None:
    tuned = bool(args.trials)
    print(f"\nkiln FP32 vs ONNX Runtime FP32, {args.threads} threads, medians over >= {args.seconds:.0f} s interleaved"
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
    print("ratio = kiln median / ONNX Runtime median (goal: untuned <= 1.5, tuned <= 1.0); "
          "better = kernels where tuning beat the default schedule")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model and batch (0: no tuning)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model and batch")
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits_cnn")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(_row(name, batch, args, Path(folder)))
                print(f"done {name} batch {batch}", file=sys.stderr, flush=True)
    _print(rows, args)


if __name__ == "__main__":
    main()
