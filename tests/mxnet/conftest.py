"""Fixtures: reference models from real MXNet, made in a side virtualenv and cached.

The side venv (.venv-mxnet/, made by make_venv.sh) holds mxnet==1.9.1 and numpy<1.24; kiln's own
environment never imports MXNet. Each export script runs there once per version of its source and
writes into .kiln-test-cache/NAME/HASH/ (gitignored), which later runs reuse.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.testing.paths import REPO, TEST_CACHE

HERE = Path(__file__).resolve().parent
VENV = REPO / ".venv-mxnet"
MAKE_VENV = HERE / "make_venv.sh"


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    completed = subprocess.run(["bash", str(MAKE_VENV), str(VENV)], capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.fail(f"could not make the MXNet side venv with {MAKE_VENV}:\n{completed.stderr[-3000:]}")
    return VENV / "bin" / "python"


def _exported(python: Path, script: str, name: str, *reads: str) -> Path:
    """Run tests/mxnet/SCRIPT OUT_DIR in the side venv unless this version of it, of the side venv's recipe and of
    the files it READS (its JSON tables, the scripts it imports) already did."""
    sources = [HERE / script, MAKE_VENV, *(HERE / read for read in reads)]
    key = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
    out = TEST_CACHE / name / key[:16]
    if not (out / "done").exists():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        completed = subprocess.run([str(python), str(HERE / script), str(partial)], capture_output=True, text=True)
        if completed.returncode != 0:
            pytest.fail(f"{script} failed in the MXNet side venv:\n{completed.stderr[-3000:]}")
        (partial / "done").touch()
        for stale in out.parent.iterdir():  # exports of earlier script versions (the zoo's take 3 GB)
            if stale != partial:
                shutil.rmtree(stale, ignore_errors=True)
        partial.rename(out)
    return out


@pytest.fixture(scope="session")
def zoo_exports(mxnet_python: Path) -> Path:
    return _exported(mxnet_python, "export_zoo.py", "mxnet-zoo", "zoo_models.json")


@pytest.fixture(scope="session")
def op_exports(mxnet_python: Path) -> Path:
    return _exported(mxnet_python, "export_ops.py", "mxnet-ops")


@pytest.fixture(scope="session")
def gluoncv_exports(mxnet_python: Path) -> Path:
    return _exported(mxnet_python, "export_gluoncv.py", "gluoncv-zoo", "gluoncv_models.json", "export_zoo.py",
                     "zoo_models.json")
