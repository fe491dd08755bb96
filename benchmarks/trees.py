"""Throughput of kiln's tree artifacts against the fastest native predict call, and against lleaves.

    .venv/bin/python benchmarks/trees.py [--threads N] [--seconds S] [--workdir DIR]
                                         [--models xgboost-100,lightgbm-1000,...] [--batches 1,10000]

Trains XGBoost and LightGBM binary classifiers of 100 and 1,000 trees (depth 8) on synthetic data,
compiles each with kiln (x86-64 preset), and times batches of 1, 100 and 10,000 rows: kiln's
`predict`, XGBoost's `inplace_predict` / LightGBM's `Booster.predict` with the same threads, and
lleaves (LightGBM only; needs `pip install lleaves 'llvmlite<0.44'`). Engines run alternately on
the same rows; each cell is rows per second at the median time. Prints a table of ratios.
With --workdir, lleaves reuses its compiled models from an earlier run (most of a full run's 25 minutes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

BATCHES = (1, 100, 10_000)
TREES = (100, 1_000)
DEPTH = 8
FEATURES = 32
TRAIN_ROWS = 4_000


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=TRAIN_ROWS + max(BATCHES), n_features=FEATURES, n_informative=20,
                               random_state=0)
    X = X.astype(np.float32)
    return X[:TRAIN_ROWS], y[:TRAIN_ROWS], X[TRAIN_ROWS:]


def train_xgboost(trees: int, X: np.ndarray, y: np.ndarray, folder: Path, threads: int) -> Path:
    import xgboost

    params = {"objective": "binary:logistic", "max_depth": DEPTH, "eta": 0.05, "nthread": threads, "seed": 0}
    path = folder / f"xgboost-{trees}.json"
    xgboost.train(params, xgboost.DMatrix(X, y), trees).save_model(path)
    return path


def train_lightgbm(trees: int, X: np.ndarray, y: np.ndarray, folder: Path, threads: int) -> Path:
    import lightgbm

    params = {"objective": "binary", "max_depth": DEPTH, "num_leaves": 2 ** DEPTH - 1, "learning_rate": 0.05,
              "min_data_in_leaf": 5, "num_threads": threads, "verbose": -1, "seed": 0}
    path = folder / f"lightgbm-{trees}.txt"
    lightgbm.train(params, lightgbm.Dataset(X, y), trees).save_model(path)
    return path


def native_engine(model: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if model.suffix == ".json":
        import xgboost

        booster = xgboost.Booster(model_file=str(model))
        booster.set_param({"nthread": threads})
        return booster.inplace_predict
    import lightgbm

    booster = lightgbm.Booster(model_file=str(model))
    return lambda rows: booster.predict(rows, num_threads=threads)


def lleaves_engine(model: Path, folder: Path, threads: int) -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        import lleaves
    except ImportError:
        return None
    compiled = lleaves.Model(model_file=str(model))
    compiled.compile(cache=str(folder / f"{model.stem}.lleaves.so"))
    return lambda rows: compiled.predict(rows, n_jobs=threads)


def compile_with_kiln(model: Path, folder: Path) -> tuple[Path, float]:
    import kiln

    start = time.perf_counter()
    artifact = kiln.compile(model, kiln.CompileOptions(kiln.target("x86-64"), folder / f"{model.stem}.kiln")).path
    return artifact, time.perf_counter() - start


def throughput(engines: dict[str, Callable], rows: np.ndarray, seconds: float) -> dict[str, float]:
    """Rows per second at each engine's median time (kiln.bench.measure: engines alternate call by call)."""
    from kiln.bench import BenchOptions, measure

    runners = {name: (lambda feed, engine=engine: [engine(feed["input"])]) for name, engine in engines.items()}
    timings, outputs = measure(runners, {"input": rows}, BenchOptions(seconds=seconds, min_repeats=5))
    reference = outputs["kiln"][0].astype(np.float64).reshape(len(rows), -1)
    for name, (out,) in outputs.items():
        if not np.allclose(np.asarray(out, dtype=np.float64).reshape(reference.shape), reference, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"{name} disagrees with kiln on {len(rows)} rows")
    return {name: timing.throughput for name, timing in timings.items()}


def main() -> None:
    import kiln

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per model and batch size")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and artifacts here")
    parser.add_argument("--models", default=",".join(f"{f}-{t}" for f in ("xgboost", "lightgbm") for t in TREES),
                        help="comma-separated FRAMEWORK-TREES to measure")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    args = parser.parse_args()
    models = args.models.split(",")
    batches = [int(batch) for batch in args.batches.split(",")]
    X_train, y_train, X_test = make_data()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-trees-") as scratch:
        folder = args.workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        header = (f"{'model':16} {'batch':>6} {'kiln rows/s':>12} {'native rows/s':>14} {'vs native':>10} "
                  f"{'lleaves rows/s':>15} {'vs lleaves':>11}")
        lines = []
        for framework, train in (("xgboost", train_xgboost), ("lightgbm", train_lightgbm)):
            for trees in TREES:
                if f"{framework}-{trees}" not in models:
                    continue
                start = time.perf_counter()
                model = train(trees, X_train, y_train, folder, args.threads)
                trained = time.perf_counter() - start
                artifact, compiled = compile_with_kiln(model, folder)
                print(f"{model.name}: trained in {trained:.0f} s, compiled by kiln in {compiled:.0f} s", flush=True)
                engines = {"kiln": kiln.load(artifact, threads=args.threads).predict,
                           "native": native_engine(model, args.threads)}
                lleaves = lleaves_engine(model, folder, args.threads) if framework == "lightgbm" else None
                if lleaves is not None:
                    engines["lleaves"] = lleaves
                for batch in batches:
                    rate = throughput(engines, X_test[:batch], args.seconds)
                    versus_lleaves = (f"{rate['lleaves']:15.0f} {rate['kiln'] / rate['lleaves']:10.2f}x"
                                      if "lleaves" in rate else f"{'-':>15} {'-':>11}")
                    line = (f"{framework}-{trees:<7} {batch:6d} {rate['kiln']:12.0f} {rate['native']:14.0f} "
                            f"{rate['kiln'] / rate['native']:9.2f}x {versus_lleaves}")
                    lines.append(line)
                    print(line, flush=True)
        print(f"\n{args.threads} threads; goal: >= 2x native at batch 1, >= 1.5x at 10,000 rows, ahead of lleaves")
        print(header)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
