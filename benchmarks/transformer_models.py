"""kiln on CPU against ONNX Runtime on transformers: BERT-base, DistilBERT, GPT-2 and ViT-B/16, each built from its
default `transformers` config with random weights (nothing is downloaded), exported with PyTorch's TorchScript
exporter (opset 17, batch 1, static shapes), compiled by kiln for this CPU.

    python benchmarks/transformer_models.py [--threads 2] [--seconds 5] [--seq 128]
                                            [--models bert,distilbert,gpt2,vit] [--keep FOLDER]

Needs torch and transformers: `pip install -e '.[bench]'` (it pins torch==2.13.0, the CPU wheel).
Prints median latencies and their ratio (below 1: kiln is faster), both engines measured interleaved in this
one process (ONNX Runtime's thread spinning off), plus export and compile times. Exits with status 1 if an
output strays from ONNX Runtime's by more than 1e-4 of its largest value, with status 2 if torch or
transformers is missing.
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
MODELS = ("bert", "distilbert", "gpt2", "vit")


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
        return hf.ViTModel(hf.ViTConfig(), add_pooling_layer=False), ("pixel_values",)
    raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def _inputs(name: str, model, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "vit":
        size = model.config.image_size
        return {"pixel_values": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
    mask = np.ones((1, seq), np.int64)
    mask[0, -seq // 4:] = 0  # padding: the attention mask matters
    feed = {"input_ids": rng.integers(0, model.config.vocab_size, (1, seq)).astype(np.int64), "attention_mask": mask}
    if name == "bert":
        feed["token_type_ids"] = (np.arange(seq) >= seq // 2).astype(np.int64)[None]
    return feed


def _export(name: str, seq: int, folder: Path) -> tuple[Path, dict[str, np.ndarray], float]:
    """The ONNX file of `name` (its first output: the last hidden state), its inputs, and the seconds it took."""
    import torch

    torch.manual_seed(0)
    started = time.perf_counter()
    network, names = _network(name)
    network.eval()
    feed = _inputs(name, network, seq)

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
    return path, feed, time.perf_counter() - started


def _row(name: str, args, folder: Path) -> dict:
    import kiln
    from kiln.bench import BenchOptions, measure, onnxruntime_runner
    from kiln.testing.reference import compile_to

    path, feed, export_s = _export(name, args.seq, folder)
    row = {"model": name, "export_s": export_s}
    started = time.perf_counter()
    artifact = compile_to(path, folder / f"{name}.kiln", args.target, shapes={k: v.shape for k, v in feed.items()})
    row["compile_s"] = time.perf_counter() - started
    predictor = kiln.load(artifact, threads=args.threads)
    runners = {"kiln": lambda inputs: list(predictor.run(inputs).values()),
               "onnxruntime": onnxruntime_runner(path, args.threads)}
    timings, outputs = measure(runners, feed, BenchOptions(threads=args.threads, seconds=args.seconds))
    for key in runners:
        row[f"{key}_ms"] = timings[key].median_ms
    reference = outputs["onnxruntime"][0]
    row["max_rel_err"] = float(np.abs(outputs["kiln"][0] - reference).max() / np.abs(reference).max())
    return row


def _print(rows: list[dict], args) -> None:
    print(f"\nkiln FP32 ({args.target}) vs ONNX Runtime FP32, batch 1, sequence {args.seq} (ViT: 197 tokens), "
          f"{args.threads} threads, medians over >= {args.seconds:.0f} s interleaved")
    print(f"{'model':11} {'ORT ms':>9} {'kiln ms':>9} {'ratio':>6} {'export s':>8} {'compile s':>9} "
          f"{'max rel err':>11}")
    for r in rows:
        print(f"{r['model']:11} {r['onnxruntime_ms']:9.2f} {r['kiln_ms']:9.2f} "
              f"{r['kiln_ms'] / r['onnxruntime_ms']:6.2f} {r['export_s']:8.1f} {r['compile_s']:9.1f} "
              f"{r['max_rel_err']:11.1e}")
    print("ratio = kiln median / ONNX Runtime median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host", help="kiln's target preset (host: this CPU's instruction sets)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the text models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--keep", type=Path, help="write the ONNX files and artifacts here (e.g. for kiln bench "
                                                  "--profile), not in a temporary folder")
    args = parser.parse_args()
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
