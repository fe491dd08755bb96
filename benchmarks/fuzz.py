"""kiln's mutation fuzzer (kiln.testing.fuzz) at scale: thousands of seeded mutants per reader.

    .venv/bin/python benchmarks/fuzz.py [--cases 5000] [--seed 0] [--jobs 2] [--readers onnx,lightgbm,...]
                                        [--save fuzz-failures]

Each reader runs in its own driver process (`python -m kiln.testing.fuzz`), --jobs of them at a time, so that its
peak worker memory and its timings are its own. Prints a table per reader: cases, outcome counts, failures (exit 1,
a worker crash or limit, a time-out), the peak resident memory of one case's worker and the slowest case; failing
mutants are kept under --save with a failure.json each. Exits 1 when any case failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.testing.fuzz import READERS

OUTCOMES = ("ok", "exit 2", "exit 3", "exit 4", "exit 5")


def run_reader(name: str, cases: int, seed: int, save: Path) -> dict:
    command = [sys.executable, "-m", "kiln.testing.fuzz", "--reader", name, "--cases", str(cases), "--seed", str(seed),
               "--save", str(save), "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode in (0, 1) and done.stdout:  # exit 1 with a report: some case failed
        (report,) = json.loads(done.stdout)
        return report
    # the driver itself failed (a bug in the fuzzer): a row that says so, and the other readers still run
    return {"reader": name, "cases": 0, "outcomes": {}, "peak_rss_bytes": 0, "slowest": {"seconds": 0.0},
            "failures": [{"reader": name, "seed": seed, "case": None, "outcome": f"driver exit {done.returncode}",
                          "mutation": "", "detail": done.stderr[-2000:]}]}


def table(reports: list[dict]) -> str:
    header = f"{'reader':<15}{'cases':>7}" + "".join(f"{o:>8}" for o in OUTCOMES) + \
        f"{'failed':>8}{'peak RSS':>10}  slowest case"
    rows = [header]
    for report in reports:
        counts = report["outcomes"]
        slowest = report["slowest"]
        rows.append(f"{report['reader']:<15}{report['cases']:>7}" + "".join(f"{counts.get(o, 0):>8}" for o in OUTCOMES)
                    + f"{len(report['failures']):>8}{report['peak_rss_bytes'] / 2**20:>8.0f}MB"
                    + f"  {slowest['seconds']:.2f} s (case {slowest.get('case')}: {slowest.get('mutation', '')[:60]})")
    for report in reports:
        for failure in report["failures"]:
            detail = (failure["detail"] or " ").splitlines()
            shown = detail[-6:] if failure["case"] is None else detail[:1]  # a driver's error: its traceback's end
            rows.append(f"FAIL {failure['reader']} seed {failure['seed']} case {failure['case']}: "
                        f"{failure['outcome']}: {failure['mutation']}\n    " + "\n    ".join(shown)
                        + f"\n    saved: {failure.get('saved')}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated; default: all")
    parser.add_argument("--save", type=Path, default=Path("fuzz-failures"))
    args = parser.parse_args()
    names = args.readers.split(",")
    unknown = sorted(set(names) - set(READERS))
    if unknown:
        parser.error(f"unknown readers {', '.join(unknown)}; known: {', '.join(READERS)}")
    args.save.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(lambda name: run_reader(name, args.cases, args.seed, args.save), names))
    print(table(reports))
    return 1 if any(report["failures"] for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
