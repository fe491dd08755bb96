"""Fixtures shared by the test modules. Helpers live in kiln.testing (shared with the benchmarks)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()
