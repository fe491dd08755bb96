"""ONNX's node conformance suite, sampled: every case kiln compiles must match onnx's expected outputs (rtol 1e-3,
atol 1e-7, as onnx's backend runner compares), or be refused cleanly (exit 3 or 4). Never an internal error
(exit 1), a wrong answer, a hang or a crash.

300 cases (one for each op kiln claims, then more by a hash of the names; kiln.testing.conformance.sample) run in
one worker process; the first 30 by that hash run in `make test-fast`, the rest are marked slow. The whole suite:
benchmarks/onnx_conformance.py.

KNOWN_FAILURES are today's internal errors and wrong answers in the sample (issue #19). They are expected to fail,
strictly: a case that starts passing (or fails cleanly) fails its test until it is removed from the list.
"""

from __future__ import annotations

import pytest

from kiln.testing.conformance import FAILURES, Outcome, Status, Worker, claimed_ops, load_cases, sample

SAMPLE, FAST = 300, 30

KNOWN_FAILURES: dict[str, str] = {}  # case -> what goes wrong today (status: exception in component: message)


_CASES = load_cases()
_FAST = {case.name for case in sample(_CASES, FAST)}
_SAMPLED = sample(_CASES, SAMPLE, claimed_ops())
_PARAMS = [pytest.param(case, id=case.name, marks=() if case.name in _FAST else pytest.mark.slow)
           for case in _SAMPLED]


@pytest.fixture(scope="module")
def worker():
    with Worker(timeout=120) as running:
        yield running


@pytest.mark.parametrize("case", _PARAMS)
def test_node_case(case, worker):
    outcome = worker.run(case, "kiln")
    failed = outcome.status in FAILURES
    known = KNOWN_FAILURES.get(case.name)
    if known and failed:
        pytest.xfail(known)
    if known:
        pytest.fail(f"{case.name} is in KNOWN_FAILURES ({known}) but now ends in {outcome.status.value}: "
                    "remove it from the list")
    assert not failed, f"{case.name}: {_describe(outcome)}"


def _describe(outcome: Outcome) -> str:
    raised = f"{outcome.error} in {outcome.component}: " if outcome.error else ""
    return f"{outcome.status.value}: {raised}{outcome.detail}"


def test_known_failures_are_sampled():
    """A name in KNOWN_FAILURES that the sample does not run (renamed in onnx, or the sample changed) is stale."""
    assert not set(KNOWN_FAILURES) - {case.name for case in _SAMPLED}


def test_sample_covers_claimed_ops():
    tested = {case.op for case in _CASES if not case.expanded}
    assert tested & claimed_ops() <= {case.op for case in _SAMPLED}


@pytest.mark.slow
def test_worker_survives_a_hung_case():
    """A case over the time limit is recorded as hung; the worker restarts and runs the next one."""
    case = next(case for case in _CASES if case.name == "test_abs")
    with Worker(timeout=0.001) as short:
        assert short.run(case, "kiln").status is Status.TIMEOUT
        short.timeout = 120
        assert short.run(case, "kiln").status is Status.PASS
