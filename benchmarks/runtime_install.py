"""kiln-runtime against the full install: installed size, and the time from a cold `python` to the first
prediction (import kiln + kiln.load + one predict) for the example CNN, ResNet-18 (random weights) and an
XGBoost model, each artifact compiled once by this (full) install.

    python benchmarks/runtime_install.py [--repeats 5]

Builds the runtime wheel, installs it into a fresh venv (pip takes numpy, apache-tvm-ffi and click from the
index or its cache), then starts the two installs' Pythons alternately, `--repeats` times per artifact, and
prints medians. Exits with status 1 if the runtime's first prediction differs from the full install's.
Sizes count the files each installed distribution's RECORD lists: for the full install, kiln-ml and what it
needs at run time (its requirements and theirs, no extras).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

import kiln
from kiln.runtime_wheel import build
from kiln.testing.models import resnet18
from kiln.testing.paths import DIGITS_CNN, DIGITS_TEST, TREE_MODELS

_FIRST_PREDICTION = """
import sys, time
started = time.perf_counter()
import kiln
imported = time.perf_counter()
import numpy as np
predictor = kiln.load(sys.argv[1])
loaded = time.perf_counter()
with np.load(sys.argv[2]) as feed:
    outputs = predictor.run(dict(feed))
done = time.perf_counter()
np.savez(sys.argv[3], **outputs)
print(imported - started, loaded - imported, done - loaded)
"""

_SIZES = """
import json, re, sys
from importlib import metadata
from pathlib import Path

def closure(name, seen):
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return
    seen[key] = dist
    for requirement in dist.requires or ():
        if "extra ==" not in requirement:
            closure(re.split(r"[ ;<>=!~\\[(]", requirement, maxsplit=1)[0], seen)

seen = {}
closure(sys.argv[1], seen)
sizes = {}
for key, dist in seen.items():
    sizes[key] = sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or ()
                     if Path(dist.locate_file(f)).is_file())
print(json.dumps(sizes))
"""


def _artifacts(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (artifact, inputs .npz), compiled for this machine's x86-64 baseline."""
    resnet = folder / "resnet18.onnx"
    onnx.save(resnet18(1), str(resnet))
    with np.load(DIGITS_TEST) as archive:
        digits_input = archive["input"][:1]
    with np.load(TREE_MODELS / "heldout.npz") as archive:
        rows = archive["multiclass_nan"][:1]
    cases = {"digits CNN": (DIGITS_CNN, {"input": (1, 1, 8, 8)}, {"input": digits_input}),
             "ResNet-18": (resnet, {}, {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224),
                                                                                         dtype=np.float32)}),
             "XGBoost": (TREE_MODELS / "xgb_multiclass_nan.ubj", {}, {"input": rows})}
    built = {}
    for name, (model, shapes, feed) in cases.items():
        slug = re.sub(r"\W+", "_", name)
        print(f"compiling {name} ...", file=sys.stderr)
        options = kiln.CompileOptions(kiln.target("x86-64"), folder / f"{slug}.kiln", kiln.ImportOptions(shapes))
        result = kiln.compile(model, options)
        inputs = folder / f"{slug}_in.npz"
        np.savez(inputs, **{result.manifest.inputs[0].name: feed["input"]})
        built[name] = (result.path, inputs)
    return built


def _sizes(python: Path, distribution: str) -> dict[str, int]:
    done = subprocess.run([str(python), "-I", "-c", _SIZES, distribution], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wheel = build(folder / "dist")
        venv = folder / "runtime-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        bare = venv / "bin" / "python"
        subprocess.run([str(bare), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                       check=True)
        installs = {"kiln-runtime": (bare, "kiln-runtime"), "kiln-ml (full)": (Path(sys.executable), "kiln-ml")}

        print(f"{'install':16} {'MB':>8} {'MB without numpy':>17}  largest")
        for label, (python, distribution) in installs.items():
            sizes = _sizes(python, distribution)
            total, numpy_size = sum(sizes.values()), sizes.get("numpy", 0)
            largest = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])
            print(f"{label:16} {total / 1e6:8.1f} {(total - numpy_size) / 1e6:17.1f}  {largest}")

        failed = False
        print(f"\ncold start to first prediction, median of {args.repeats} "
              "(seconds: import kiln / kiln.load / first predict / total)")
        print(f"{'model':12} {'install':16} {'import':>7} {'load':>7} {'predict':>8} {'total':>7}")
        for name, (artifact, inputs) in _artifacts(folder).items():
            samples: dict[str, list[list[float]]] = {label: [] for label in installs}
            for _ in range(args.repeats):
                for label, (python, _) in installs.items():
                    out = folder / f"{installs[label][1]}_out.npz"
                    done = subprocess.run([str(python), "-I", "-c", _FIRST_PREDICTION, str(artifact), str(inputs),
                                           str(out)], capture_output=True, text=True, check=True)
                    samples[label].append([float(x) for x in done.stdout.split()])
            outputs = [dict(np.load(folder / f"{installs[label][1]}_out.npz")) for label in installs]
            if any(not np.array_equal(outputs[0][k], outputs[1][k]) for k in outputs[0]):
                print(f"{name}: the runtime's outputs differ from the full install's", file=sys.stderr)
                failed = True
            for label, rows in samples.items():
                medians = [statistics.median(column) for column in zip(*rows)]
                print(f"{name:12} {label:16} {medians[0]:7.3f} {medians[1]:7.3f} {medians[2]:8.3f} "
                      f"{statistics.median(sum(row) for row in rows):7.3f}")
        print(f"\nkiln {metadata.version('kiln-ml')}, {wheel.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
