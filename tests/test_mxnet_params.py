"""The .params reader: every dtype and format version MXNet 1.x writes (fixtures written by real MXNet,
tests/mxnet/make_fixtures.py), and mutated files that must fail cleanly, quickly and without
allocating beyond their size."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from kiln.compiler.frontends.mxnet.params import read_params
from kiln.errors import InputError
from kiln.testing.paths import MXNET_DIGITS

FIXTURES = Path(__file__).resolve().parent / "mxnet" / "fixtures"
DIGITS_PARAMS = MXNET_DIGITS / "digits-0000.params"
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64")


def test_reads_every_dtype_and_strips_arg_aux_prefixes():
    params = read_params(FIXTURES / "dtypes.params")
    for dtype in DTYPES:
        array = params[f"{dtype}_weight"]
        assert array.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(params["bn_running_mean"], np.arange(4))
    np.testing.assert_array_equal(params["plain_name"], np.arange(24).reshape(2, 3, 4))


def test_reads_numpy_semantics_format_with_scalars_and_empty_arrays():
    params = read_params(FIXTURES / "numpy.params")
    assert params["scalar"].shape == () and params["empty"].shape == (2, 0)
    np.testing.assert_array_equal(params["vector"], [0, 1, 2])


def _read_fails_cleanly(path: Path) -> None:
    """Reading succeeds or raises InputError; peak allocation stays within a few times the file size."""
    tracemalloc.start()
    try:
        read_params(path)
    except InputError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    size = path.stat().st_size
    assert peak <= 4 * size + (256 << 10), f"allocated {peak} bytes for a {size}-byte file"


def _mutants(data: bytes):
    for end in range(len(data)):  # every truncation point: each section of each array, and the names
        yield f"truncated at {end}", data[:end]
    for offset in range(len(data)):
        yield f"byte {offset} flipped", data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]
    for offset in range(0, len(data) - 8):  # any 8 bytes read as a count or size: make them enormous
        for huge in (2**63 - 1, 2**64 - 1, 2**32):
            yield f"{huge} at {offset}", data[:offset] + struct.pack("<Q", huge) + data[offset + 8:]


@pytest.mark.parametrize("fixture", [pytest.param(FIXTURES / "dtypes.params", marks=pytest.mark.slow),
                                     FIXTURES / "numpy.params"])
def test_mutated_params_never_crash_hang_or_over_allocate(fixture, tmp_path):
    started = time.monotonic()
    mutant = tmp_path / "mutant.params"
    for what, data in _mutants(fixture.read_bytes()):
        mutant.write_bytes(data)
        try:
            _read_fails_cleanly(mutant)
        except Exception as exc:
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    assert time.monotonic() - started < 120


def test_truncated_real_model_params_name_the_problem(tmp_path):
    data = DIGITS_PARAMS.read_bytes()
    mutant = tmp_path / "digits.params"
    for end in range(0, len(data), 97):
        mutant.write_bytes(data[:end])
        with pytest.raises(InputError, match="truncated or corrupted|magic"):
            read_params(mutant)


@pytest.mark.parametrize("data, message", [
    (b"", "header needs 16 bytes"),
    (b"\x13\x01" + bytes(14), "magic number 0x113"),
    (struct.pack("<QQQ", 0x112, 0, 2**40), "array count 1099511627776 cannot fit"),
    (struct.pack("<QQQQ", 0x112, 0, 0, 1), "name count 1 cannot fit"),
])
def test_bad_headers_are_clear_errors(tmp_path, data, message):
    path = tmp_path / "bad.params"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_params(path)
