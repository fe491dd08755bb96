"""ONNX's node conformance suite (1,884 one-op models with expected outputs, from onnx's own loader) through kiln
and ONNX Runtime, compared as onnx's backend runner compares (shapes, dtypes, assert_allclose rtol 1e-3, atol 1e-7).

    python benchmarks/onnx_conformance.py [--filter REGEX] [--limit N] [--sample N] [--timeout S] [--json out.json]

kiln compiles each case for the host (inputs pinned to the case's shapes, verify off: the suite's outputs are
the reference) in a long-lived worker process. A case kiln refuses because a parameter (axes, scales, K, ...)
is a graph input is compiled again with that input frozen to the case's value (`--freeze`) and counted on its own
row when it then passes: the artifact computes for that value only, as any static-shape compiler would; a case that hangs past --timeout or crashes the worker is
recorded as such and the worker restarted. Prints how many cases each engine passes, fails with a wrong answer,
refuses cleanly (exit 4 unsupported, exit 3 other) or fails with an internal error (exit 1, with the exception
and the component its traceback names), then kiln's failures grouped by reason, op and class.
The suite is written out once under .kiln-test-cache/ (kiln.testing.conformance).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from kiln.testing.conformance import (ENGINES, FAILURES, PASSES, Outcome, Status, Worker, claimed_ops, load_cases,
                                      sample)


def _cases(args) -> list:
    cases = load_cases()
    if args.filter:
        cases = [case for case in cases if re.search(args.filter, case.name)]
    if args.sample:
        cases = sample(cases, args.sample, claimed_ops())
    return cases[:args.limit] if args.limit else cases


def _run(cases: list, args) -> list[dict]:
    rows = []
    started = time.perf_counter()
    with Worker(timeout=args.timeout, threads=args.threads, quiet=not args.verbose) as worker:
        for i, case in enumerate(cases, 1):
            outcomes = {engine: worker.run(case, engine) for engine in args.engines}
            rows.append({"name": case.name, "op": case.label, **{e: o.to_json() for e, o in outcomes.items()}})
            kiln = outcomes.get("kiln")
            shown = f"{kiln.status.name.lower()} {kiln.seconds:.1f}s" if kiln else ""
            print(f"[{i}/{len(cases)} {time.perf_counter() - started:.0f}s] {case.name} {shown}",
                  file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict], engines: tuple[str, ...]) -> None:
    counts = {engine: Counter(Outcome.from_json(row[engine]).status for row in rows) for engine in engines}
    print(f"\nONNX node conformance suite: {len(rows)} cases, host target ({platform.machine()})")
    print(f"{'':38}" + "".join(f"{engine:>13}" for engine in engines))
    for status in Status:
        if status in (Status.TIMEOUT, Status.CRASH) and not any(counts[e][status] for e in engines):
            continue
        print(f"{status.value:38}" + "".join(f"{counts[e][status]:>13}" for e in engines))
    print(f"{'total':38}" + "".join(f"{sum(counts[e].values()):>13}" for e in engines))


def _failures(rows: list[dict], engine: str, top: int) -> None:
    outcomes = [(row["op"], row["name"], Outcome.from_json(row[engine])) for row in rows if engine in row]
    failed = [(op, name, o) for op, name, o in outcomes if o.status not in PASSES]
    if not failed:
        return
    print(f"\n{engine}: failures by class and reason (cases, ops)")
    by_reason: dict[tuple[Status, str], list[str]] = defaultdict(list)
    for op, _, outcome in failed:
        by_reason[(outcome.status, outcome.reason)].append(op)
    for (status, reason), ops in sorted(by_reason.items(), key=lambda item: -len(item[1]))[:top]:
        shown = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in Counter(ops).most_common(6))
        more = f", +{len(set(ops)) - 6} ops" if len(set(ops)) > 6 else ""
        print(f"{len(ops):5}  {status.name.lower():11} {reason}\n       ops: {shown}{more}")
    print(f"\n{engine}: ops with the most failing cases (wrong/internal/hung/crashed marked !)")
    by_op: dict[str, Counter] = defaultdict(Counter)
    for op, _, outcome in outcomes:
        by_op[op][outcome.status] += 1
    passed = {op: sum(counts[status] for status in PASSES) for op, counts in by_op.items()}
    worst = sorted(by_op.items(), key=lambda item: passed[item[0]] - sum(item[1].values()))[:top]
    for op, counts in worst:
        if sum(counts.values()) == passed[op]:
            break
        parts = [f"{status.name.lower()}{'!' if status in FAILURES else ''} {n}"
                 for status, n in counts.most_common() if status not in PASSES]
        print(f"  {op:40} {passed[op]:3}/{sum(counts.values()):<3} pass; " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", help="only cases whose name matches this regular expression (re.search)")
    parser.add_argument("--sample", type=int, default=0,
                        help="a deterministic sample of N cases, one for every op kiln claims first (0: all)")
    parser.add_argument("--limit", type=int, default=0, help="at most the first N cases (after --filter, --sample)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one case may take before it counts "
                                                                     "as hung (the worker is then restarted)")
    parser.add_argument("--threads", type=int, default=1, help="TVM threads in the worker")
    parser.add_argument("--engines", default=",".join(ENGINES), help="kiln, onnxruntime, or both")
    parser.add_argument("--verbose", action="store_true", help="show what the worker prints (TVM's messages)")
    parser.add_argument("--top", type=int, default=25, help="failure reasons and ops to list")
    parser.add_argument("--json", type=Path, help="write every case's outcome per engine to this file")
    args = parser.parse_args()
    args.engines = tuple(engine for engine in args.engines.split(",") if engine)
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {', '.join(sorted(unknown))}; choose from {', '.join(ENGINES)}")
    started = time.perf_counter()
    rows = _run(_cases(args), args)
    _table(rows, args.engines)
    for engine in args.engines:
        _failures(rows, engine, args.top)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "seconds": time.perf_counter() - started}, indent=1))


if __name__ == "__main__":
    main()
