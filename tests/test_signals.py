"""A signal stops any `kiln` command with its documented exit code (128 + signum) and one line, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.cli import cli
from kiln.errors import EXIT_CODES
from kiln.testing.paths import TREE_MODELS

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")


@pytest.fixture(scope="module")
def tree_artifact(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    output = tmp_path_factory.mktemp("signals") / "xgb.kiln"
    result = CliRunner().invoke(cli, ["compile", str(TREE_MODELS / "xgb_binary_nan.json"), "-o", str(output),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    return output


def _wait_for_handler(process: subprocess.Popen, signum: int) -> None:
    """Until the process catches `signum` (its bit in SigCgt): kiln.cli.main has installed its handlers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines())
        if int(fields["SigCgt"], 16) >> (signum - 1) & 1:
            return
        time.sleep(0.05)
    pytest.fail("kiln did not install its signal handlers")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_command_with_its_documented_exit_code(tree_artifact, signum):
    # 1000 runs of 100,000 rows take far longer than the test waits.
    process = subprocess.Popen([sys.executable, "-m", "kiln", "bench", str(tree_artifact), "--batch", "100000",
                                "--seconds", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_handler(process, signal.SIGTERM)  # main() installs SIGINT's first
        time.sleep(1)  # into the command itself
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum and process.returncode in EXIT_CODES, stderr
    assert stderr.strip().splitlines()[-1] == f"error: stopped by {signal.Signals(signum).name}"
    assert "Traceback" not in stderr and "internal error" not in stderr and "Aborted" not in stderr
