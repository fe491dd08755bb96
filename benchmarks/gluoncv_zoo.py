"""kiln on CPU against ONNX Runtime on the GluonCV model zoo (#26): classification, pose, segmentation and detection
networks built by GluonCV 0.10.5 with seeded random weights (pretrained=False: nothing is downloaded), exported by
real MXNet 1.9.1 in the side virtualenv (tests/mxnet/export_gluoncv.py), converted and compiled by kiln, FP32 and
INT8, batch 1.

    python benchmarks/gluoncv_zoo.py [--threads 2] [--seconds 5] [--models resnet50_v1d,fcn_resnet50_voc,...]
                                     [--side N] [--no-int8] [--calib 8] [--keep FOLDER] [--json FILE]

Needs the MXNet side venv (tests/mxnet/make_venv.sh makes .venv-mxnet; kiln itself never imports MXNet). The input
sizes are those of SIZES below (--side N: N x N for every model): the zoo's own for classification and pose, reduced
for segmentation (480 in the zoo) and detection (512, 416, 512, 600x1000) to keep 2-core builds and runs short;
Faster R-CNN keeps 16 proposals after NMS, not 300 (export_gluoncv.build).
ONNX Runtime runs the ONNX graph kiln converted from MXNet (the artifact's "onnx" file) against kiln FP32, and kiln's
own QDQ model (the INT8 artifact's "int8_onnx" file) against kiln INT8; INT8 is calibrated on --calib random inputs
(uniform in [-1, 1], as the exports' BatchNorm statistics). All four engines run interleaved in this one process on
MXNet's input of the export (on which the random detectors detect something), ONNX Runtime's thread spinning off.
Prints median latencies, their ratios (below 1: kiln is faster) and compile times; where kiln refuses INT8, the
reason instead. Exits with status 1 if an FP32 output strays from ONNX Runtime's by more than 1e-3 of its largest
value (detections: rows compared in order, else as sets), or an INT8 output fails kiln's own compile-time check (one
output step of the QDQ model, or 1e-2 of the largest value where the output is not quantized) on MXNet's input
(INT8 detections are reported, not checked: a one-step score difference may change what NMS keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPORT = REPO / "tests" / "mxnet" / "export_gluoncv.py"
MXNET_PYTHON = REPO / ".venv-mxnet" / "bin" / "python"
# model: (task, (height, width)), declared once.
SIZES = {
    "resnet50_v1d": ("classification", (224, 224)),
    "mobilenetv3_large": ("classification", (224, 224)),
    "se_resnext50_32x4d": ("classification", (224, 224)),
    "simple_pose_resnet18_v1b": ("pose", (256, 192)),
    "fcn_resnet50_voc": ("segmentation", (256, 256)),
    "deeplab_resnet50_ade": ("segmentation", (256, 256)),
    "ssd_512_mobilenet1.0_voc": ("detection", (320, 320)),
    "yolo3_mobilenet1.0_voc": ("detection", (320, 320)),
    "center_net_resnet18_v1b_voc": ("detection", (320, 320)),
    "faster_rcnn_resnet50_v1b_voc": ("detection", (320, 320)),
}
FP32_TOLERANCE = 1e-3  # of the largest reference output


def _export(name: str, size: tuple[int, int], folder: Path) -> tuple[Path, float]:
    """FOLDER/NAME/ with MXNet's export of `name` at `size` (reused when already there), and the seconds it took."""
    out = folder / name
    meta = out / "meta.json"
    if meta.exists() and json.loads(meta.read_text())["input_shape"] == [1, 3, *size]:
        return out, 0.0
    if not MXNET_PYTHON.exists():
        sys.exit("benchmarks/gluoncv_zoo.py exports with real MXNet: make its venv first (tests/mxnet/make_venv.sh)")
    started = time.perf_counter()
    done = subprocess.run([str(MXNET_PYTHON), str(EXPORT), str(folder), f"{name}:{size[0]}x{size[1]}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"exporting {name} failed in the MXNet side venv:\n{done.stderr[-3000:]}")
    return out, time.perf_counter() - started


def _compile(export: Path, output: Path, args, calib: Path | None = None):
    """kiln's compile result for the export (INT8 when given calibration data), and the seconds it took."""
    import kiln

    reference = np.load(export / "reference.npz")
    imports = kiln.ImportOptions({"data": reference["data"].shape}, params=export / "model-0000.params")
    options = kiln.CompileOptions(
        kiln.target(args.target), output, imports, verify=False, calib=calib,
        precision=kiln.Precision.INT8 if calib else kiln.Precision.FP32,
        quantize=kiln.QuantizeOptions(cache_dir=str(output.parent / "calib-cache")))
    started = time.perf_counter()
    result = kiln.compile(export / "model-symbol.json", options)
    return result, time.perf_counter() - started


def _relative_error(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The largest difference of any output, over that output's largest reference value."""
    errors = [float(np.abs(a.astype(np.float64) - e).max() / (np.abs(e).max() or 1.0)) if a.size else 0.0
              for a, e in zip(got, expected)]
    return max(errors) if len(got) == len(expected) and all(a.shape == e.shape for a, e in zip(got, expected)) \
        else float("inf")


def _fp32_error(task: str, got: list[np.ndarray], expected: list[np.ndarray]) -> tuple[float, bool]:
    """(relative error, whether detections needed the comparison as sets)."""
    error = _relative_error(got, expected)
    if task != "detection" or error <= FP32_TOLERANCE or len(got) != len(expected):
        return error, False
    from kiln.verification import row_sets_difference

    return row_sets_difference(got, expected), True


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _row(name: str, args, folder: Path) -> dict:
    import kiln
    from kiln.bench import BenchOptions, measure, onnxruntime_runner
    from kiln.errors import KilnError
    from kiln.verification import verify

    task, size = SIZES[name]
    if args.side:
        size = (args.side, args.side)
    export, export_s = _export(name, size, folder / "exports")
    row = {"model": name, "task": task, "input": f"{size[0]}x{size[1]}", "export_s": export_s}
    fp32, row["compile_s"] = _compile(export, folder / f"{name}.kiln", args)
    artifacts = {"kiln": fp32.path}
    runners = {"onnxruntime": onnxruntime_runner(fp32.path / fp32.manifest.files["onnx"].file, args.threads)}
    if args.int8:
        calib = folder / f"{name}_calib.npz"
        np.savez(calib, data=np.random.default_rng(1).uniform(-1, 1, (args.calib, 3, *size)).astype(np.float32))
        try:
            int8, row["int8_compile_s"] = _compile(export, folder / f"{name}.int8.kiln", args, calib)
        except KilnError as exc:
            row["int8_refused"] = _first_line(exc)
        else:
            artifacts["int8"] = int8.path
            runners["onnxruntime_int8"] = onnxruntime_runner(int8.path / int8.manifest.files["int8_onnx"].file,
                                                             args.threads)
            kernels = int8.manifest.integer_kernels
            row["int8_ops"] = kernels.int8_ops if kernels else 0
            row["float_ops"] = len(kernels.float_ops) if kernels else 0
            row["int8_isa"] = kernels.isa if kernels else None
    predictors = {key: kiln.load(path, threads=args.threads) for key, path in artifacts.items()}
    runners.update({key: (lambda feed, p=p: list(p.run(feed).values())) for key, p in predictors.items()})
    feed = {"data": np.load(export / "reference.npz")["data"]}
    try:
        timings, outputs = measure(runners, feed, BenchOptions(threads=args.threads, seconds=args.seconds))
    except Exception as exc:  # an engine that cannot run this model is a result too: the other models go on
        row["run_failed"] = _first_line(exc)
        return row
    for key in runners:
        row[f"{key}_ms"] = timings[key].median_ms
    row["max_rel_err"], row["as_sets"] = _fp32_error(task, outputs["kiln"], outputs["onnxruntime"])
    if task == "detection":  # boxes with a score (GluonCV pads its detections with score -1)
        row.update({f"{key}_detections": int((outputs[key][1] > 0).sum()) for key in artifacts})
    if "int8" in artifacts:  # kiln's own rule (as `kiln compile` checks, here on MXNet's input)
        check = verify(predictors["int8"].run, int8.path / int8.manifest.files["int8_onnx"].file,
                       kiln.Precision.INT8, feed, "MXNet's input")
        row["int8_err"], row["int8_tolerance"], row["int8_unit"] = check.difference, check.tolerance, check.unit
    return row


def _ms(row: dict, key: str) -> str:
    return f"{row[key]:9.2f}" if key in row else f"{'-':>9}"


def _ratio(row: dict, mine: str, theirs: str) -> str:
    return f"{row[mine] / row[theirs]:8.2f}" if mine in row and theirs in row else f"{'-':>8}"


def _print(rows: list[dict], args) -> None:
    print(f"\nGluonCV zoo (random weights), kiln ({args.target}) vs ONNX Runtime, batch 1, {args.threads} threads, "
          f"medians over >= {args.seconds:.0f} s interleaved")
    print(f"{'model':29} {'input':>7} {'compile s':>9} {'ORT ms':>9} {'kiln ms':>9} {'kiln/ORT':>8} "
          f"{'int8 s':>7} {'ORT i8 ms':>9} {'kiln i8':>9} {'kiln/ORT':>8} {'/fp32':>6} {'int8 ops':>8} "
          f"{'fp32 err':>8} {'int8 err':>9}")
    for r in rows:
        int8_s = f"{r['int8_compile_s']:7.0f}" if "int8_compile_s" in r else f"{'-':>7}"
        ops = f"{r['int8_ops']:>3}/{r['int8_ops'] + r['float_ops']:<4}" if "int8_ops" in r else f"{'-':>8}"
        err = f"{r['max_rel_err']:7.1e}{'*' if r['as_sets'] else ' '}" if "max_rel_err" in r else f"{'-':>8}"
        steps = f"{'-':>9}"
        if "int8_err" in r:
            steps = f"{r['int8_err']:7.2f} s" if r["int8_unit"].endswith("steps") else f"{r['int8_err']:9.1e}"
        print(f"{r['model']:29} {r['input']:>7} {r['compile_s']:9.0f} {_ms(r, 'onnxruntime_ms')} {_ms(r, 'kiln_ms')} "
              f"{_ratio(r, 'kiln_ms', 'onnxruntime_ms')} {int8_s} {_ms(r, 'onnxruntime_int8_ms')} {_ms(r, 'int8_ms')} "
              f"{_ratio(r, 'int8_ms', 'onnxruntime_int8_ms')} {_ratio(r, 'int8_ms', 'kiln_ms')[2:]} {ops} {err} "
              f"{steps}")
    print("kiln/ORT = kiln median / ONNX Runtime median (FP32: the converted ONNX; INT8: kiln's QDQ model); /fp32 = "
          "kiln int8 / kiln fp32; int8 ops = quantized convs/matmuls run as integer kernels; fp32 err = largest "
          "difference from ONNX Runtime over its largest output (* detections compared as sets); int8 err = kiln's "
          "compile-time check on MXNet's input: in output quantization steps (s, tolerance 1) where the QDQ model "
          "quantizes the output, else as fp32 err (tolerance 1e-2)")
    for r in rows:
        if r.get("as_sets"):
            print(f"* {r['model']}: detections reordered by float rounding, compared as sets of rows")
        if "int8_detections" in r:
            print(f"{r['model']}: {r['kiln_detections']} detections in FP32, {r['int8_detections']} in INT8"
                  + (" (INT8 timings then run NMS on nothing)" if not r["int8_detections"] else ""))
        if "int8_refused" in r:
            print(f"{r['model']}: no INT8: {r['int8_refused']}")
        if "run_failed" in r:
            print(f"{r['model']}: not measured: {r['run_failed']}")


def _mismatches(rows: list[dict]) -> list[str]:
    found = [f"{r['model']}: FP32 max rel err {r['max_rel_err']:.1e} > {FP32_TOLERANCE}" for r in rows
             if r.get("max_rel_err", 0.0) > FP32_TOLERANCE]
    found += [f"{r['model']}: INT8 differs from ONNX Runtime by {r['int8_err']:.3g} {r['int8_unit']} "
              f"(tolerance {r['int8_tolerance']:g})" for r in rows
              if r["task"] != "detection" and r.get("int8_err", 0.0) > r.get("int8_tolerance", 0.0)]
    found += [f"{r['model']}: {r['run_failed']}" for r in rows if "run_failed" in r]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host", help="kiln's target preset (host: this CPU's instruction sets)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model")
    parser.add_argument("--models", default=",".join(SIZES), help=f"a subset of {', '.join(SIZES)}")
    parser.add_argument("--side", type=int, help="export every model at N x N instead of its size in SIZES")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also compile and measure INT8 (kiln vs ONNX Runtime on kiln's QDQ model)")
    parser.add_argument("--calib", type=int, default=8, help="random calibration inputs for INT8")
    parser.add_argument("--keep", type=Path, help="write exports and artifacts here (reused exports; artifacts for "
                                                  "kiln bench --profile), not in a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    unknown = [name for name in args.models.split(",") if name not in SIZES]
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}: choose from {', '.join(SIZES)}")
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows.append(_row(name, args, folder))
            print(f"done {name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    _print(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "target": args.target, "rows": rows}, indent=1))
    mismatches = _mismatches(rows)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
