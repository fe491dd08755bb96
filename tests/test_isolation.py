"""kiln.isolation: the `kiln` command's work in a child process under limits. A crash, a runaway or a signal in
native code ends the command with a documented exit code and leaves no staging folder behind."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from kiln.errors import InputError, UnsupportedOpError
from kiln.isolation import Limits, run_isolated
from kiln.testing.models import resnet18

NO_LIMITS = Limits(None, None)


def _crash():
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native reader does on a corrupt file


def _unsupported():
    raise UnsupportedOpError("ONNX", {"Celu": ["celu_0"]})


def test_the_result_and_kiln_errors_cross_back_intact():
    assert run_isolated(lambda: {"answer": 42}, NO_LIMITS, "testing") == {"answer": 42}
    with pytest.raises(UnsupportedOpError) as caught:
        run_isolated(_unsupported, NO_LIMITS, "testing")
    assert caught.value.unsupported == {"Celu": ["celu_0"]} and caught.value.exit_code == 4


def test_a_bug_keeps_its_type_and_the_workers_traceback():
    with pytest.raises(ZeroDivisionError) as caught:
        run_isolated(lambda: 1 / 0, NO_LIMITS, "testing")
    assert any("kiln's worker process" in note and "ZeroDivisionError" in note for note in caught.value.__notes__)


def test_a_crash_in_native_code_is_an_input_error_naming_the_signal():
    with pytest.raises(InputError, match=r"failed while reading model.txt: it died of SIGSEGV"):
        run_isolated(_crash, NO_LIMITS, "reading model.txt")


def test_the_memory_limit_stops_a_runaway():
    with pytest.raises(InputError, match="ran out of memory: kiln's worker stops at 1.0 GiB of memory"):
        run_isolated(lambda: bytearray(2 * 2**30), Limits(2**30, None), "reading model.txt")


def test_the_cpu_time_limit_stops_a_loop():
    def spin():
        while True:
            pass

    started = time.monotonic()
    with pytest.raises(InputError, match="ran past the CPU time limit"):
        run_isolated(spin, Limits(None, 1), "reading model.txt")
    assert time.monotonic() - started < 30


def test_cleanup_runs_after_the_child_however_it_ended(tmp_path):
    marker = tmp_path / "cleaned"
    with pytest.raises(InputError):
        run_isolated(_crash, NO_LIMITS, "testing", cleanup=marker.touch)
    assert marker.exists()


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("KILN_MEMORY_LIMIT_GB", "2.5")
    monkeypatch.setenv("KILN_CPU_LIMIT_S", "0")
    assert Limits.from_environment() == Limits(int(2.5 * 2**30), None)
    monkeypatch.setenv("KILN_CPU_LIMIT_S", "soon")
    with pytest.raises(Exception, match="KILN_CPU_LIMIT_S='soon' is not a number"):
        Limits.from_environment()


@pytest.mark.slow
def test_sigterm_during_a_native_build_ends_kiln_promptly_and_leaves_nothing(tmp_path):
    model, output = tmp_path / "resnet18.onnx", tmp_path / "resnet18.kiln"
    onnx.save(resnet18(1), str(model))
    kiln = Path(sys.executable).with_name("kiln")
    process = subprocess.Popen([str(kiln), "compile", str(model), "-o", str(output)], stderr=subprocess.PIPE,
                               text=True)
    for line in process.stderr:
        if "compiling with TVM" in line:  # TVM's build: native code for many seconds
            break
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 5
    assert "stopped by SIGTERM" in rest and "Traceback" not in rest
    assert not output.exists() and not list(tmp_path.glob(".resnet18.kiln.*"))
    assert not _children_of(process.pid)


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the worker must not outlive the command)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_cpu_limit_reached_in_native_code_ends_the_command_with_exit_3(tmp_path):
    model, output = tmp_path / "resnet18.onnx", tmp_path / "resnet18.kiln"
    onnx.save(resnet18(1), str(model))
    kiln = Path(sys.executable).with_name("kiln")
    done = subprocess.run([str(kiln), "compile", str(model), "-o", str(output)], capture_output=True, text=True,
                          env={**os.environ, "KILN_CPU_LIMIT_S": "2"}, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "failed while compiling" in done.stderr and "CPU time limit" in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists() and not list(tmp_path.glob(".resnet18.kiln.*"))


def test_limits_never_exceed_the_ones_the_command_was_started_with():
    script = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30)); "
              "from kiln.isolation import Limits, run_isolated; "
              "print(run_isolated(lambda: resource.getrlimit(resource.RLIMIT_AS)[1], Limits(2**40, None), 'x'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 8 * 2**30


def test_a_closed_output_pipe_ends_the_command_quietly():
    """`kiln inspect m.onnx | head -1`: the write that meets the closed pipe ends the command with 141, no traceback
    (tested on a command that raises it: whether a real pipe is still open when kiln writes is a race)."""
    script = ("import click\nfrom kiln.cli_options import handles_errors\n"
              "@click.command()\n@handles_errors\ndef command():\n    raise BrokenPipeError(32, 'Broken pipe')\n"
              "command()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 141
    assert done.stderr == ""
