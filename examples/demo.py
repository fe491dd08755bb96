"""kiln's main job on the bundled digits CNN: compile, quantize, run, and compare with ONNX Runtime.

Run it with `make demo` (which sets up .venv first) or `.venv/bin/python examples/demo.py`.
It writes its artifacts to examples/out/ and prints one table: accuracy on the held-out digits,
agreement with ONNX Runtime, and batch-1 latency of all four engines timed round-robin in one run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import kiln
from kiln.bench import BenchOptions, measure, onnxruntime_runner
from kiln.cli_options import TerminalProgress

HERE = Path(__file__).resolve().parent
DIGITS = HERE / "digits_cnn"
OUT = HERE / "out"
THREADS = 2


def main() -> None:
    data = np.load(DIGITS / "digits_test.npz")
    images, labels = data["input"], data["labels"]
    OUT.mkdir(exist_ok=True)
    runners = {}
    for precision in (kiln.Precision.FP32, kiln.Precision.INT8):
        artifact = _compile(precision)
        source = artifact / ("model.int8.onnx" if precision is kiln.Precision.INT8 else "model.onnx")
        runners[f"onnxruntime {precision.value}"] = onnxruntime_runner(source, THREADS)
        predictor = kiln.load(artifact, threads=THREADS)
        runners[f"kiln {precision.value}"] = lambda feed, p=predictor: list(p.run(feed).values())
    logits = {name: np.concatenate([run({"input": images[i:i + 1]})[0] for i in range(len(images))])
              for name, run in runners.items()}
    timings, _ = measure(runners, {"input": images[:1]}, BenchOptions(threads=THREADS, seconds=3.0))
    reference, ort_ms = logits["onnxruntime fp32"], timings["onnxruntime fp32"].median_ms
    rows = [_row(name, logits[name], reference, labels, timings[name].median_ms, ort_ms) for name in runners]
    _print_table(rows, len(images))


def _compile(precision: "kiln.Precision") -> Path:
    """The digits CNN at batch 1 for this machine; INT8 is calibrated and must keep top-1 within 1 point."""
    options = kiln.CompileOptions(
        kiln.target("host"), OUT / f"digits_{precision.value}.kiln", kiln.ImportOptions({"input": (1, 1, 8, 8)}),
        precision=precision, calib=DIGITS / "digits_calib.npz",
        quantize=kiln.QuantizeOptions(eval=DIGITS / "digits_test.npz", max_accuracy_drop=1.0,
                                      cache_dir=str(OUT / ".kiln-cache")))
    return kiln.compile(DIGITS / "digits_cnn.onnx", options, TerminalProgress(bars=False)).path


def _row(name: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, ms: float,
         ort_fp32_ms: float) -> dict:
    return {
        "engine": name,
        "top1": float(np.mean(logits.argmax(axis=1) == labels)),
        "agrees_with_ort_fp32": float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1))),
        "max_abs_diff_vs_ort_fp32": float(np.max(np.abs(logits - reference))),
        "median_ms_batch1": ms,
        "speedup_vs_ort_fp32": ort_fp32_ms / ms,
    }


def _print_table(rows: list[dict], count: int) -> None:
    print(f"\ndigits CNN, {count} held-out images; latency at batch 1, {THREADS} threads, "
          "medians timed round-robin in one run")
    header = (f"{'engine':18} {'top-1':>7} {'agrees w/ ORT fp32':>19} {'max |diff|':>11} {'ms':>8} "
              f"{'vs ORT fp32':>12}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['engine']:18} {row['top1']:7.2%} {row['agrees_with_ort_fp32']:19.2%} "
              f"{row['max_abs_diff_vs_ort_fp32']:11.2e} {row['median_ms_batch1']:8.3f} "
              f"{row['speedup_vs_ort_fp32']:11.2f}x")
    (OUT / "demo.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
