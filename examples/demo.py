"""kiln's main job on the bundled digits CNN: compile, run, and compare against ONNX Runtime.

Run it with `make demo` (which sets up .venv first) or `.venv/bin/python examples/demo.py`.
It writes its artifacts to examples/out/ and prints one table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import kiln
from kiln.bench import BenchOptions, bench, onnxruntime_runner
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.pipeline import CompileOptions, compile_model
from kiln.targets import resolve

HERE = Path(__file__).resolve().parent
MODEL = HERE / "digits_cnn" / "digits_cnn.onnx"
TEST = HERE / "digits_cnn" / "digits_test.npz"
OUT = HERE / "out"
THREADS = 2


def main() -> None:
    data = np.load(TEST)
    images, labels = data["input"], data["labels"]
    reference = onnxruntime_runner(MODEL, THREADS)({"input": images})[0]
    rows = [_row("onnxruntime fp32", reference, reference, labels, None)]
    OUT.mkdir(exist_ok=True)
    for batch in (1, len(images)):
        shapes = ImportOptions({"input": (batch, 1, 8, 8)})
        path = compile_model(MODEL, CompileOptions(resolve("host"), OUT / f"digits_b{batch}.kiln", shapes),
                             lambda message: print(f"kiln: {message}"))
        if batch == 1:
            timing = bench(path, BenchOptions(vs="onnxruntime", threads=THREADS, seconds=2.0))
        else:
            logits = kiln.load(path).predict(images)
    rows.append(_row("kiln fp32 (host)", logits, reference, labels, timing))
    _print_table(rows, len(images))


def _row(name: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, timing: dict | None) -> dict:
    return {
        "engine": name,
        "top1": float(np.mean(logits.argmax(axis=1) == labels)),
        "agree": float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1))),
        "max_diff": float(np.max(np.abs(logits - reference))),
        "kiln_ms": timing["kiln"]["median_ms"] if timing else None,
        "ort_ms": timing["onnxruntime"]["median_ms"] if timing else None,
        "speedup": timing["speedup"] if timing else None,
    }


def _print_table(rows: list[dict], count: int) -> None:
    print(f"\ndigits CNN, {count} held-out images; latency at batch 1, {THREADS} threads (medians, same run)")
    header = f"{'engine':20} {'top-1':>7} {'agrees w/ ORT':>14} {'max |diff|':>11} {'ms':>8} {'ORT ms':>8} {'vs ORT':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        timing = (f"{row['kiln_ms']:8.3f} {row['ort_ms']:8.3f} {row['speedup']:6.2f}x" if row["kiln_ms"]
                  else f"{'':8} {'':8} {'':7}")
        print(f"{row['engine']:20} {row['top1']:7.2%} {row['agree']:14.2%} {row['max_diff']:11.2e} {timing}")
    (OUT / "demo.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
