"""kiln.files: atomic writes leave the old file or the new one and never a temporary file; the digests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from kiln.files import atomic_path, atomic_write, folder_sha256, sha256_file


def test_atomic_write_replaces_the_file(tmp_path: Path):
    path = tmp_path / "out.json"
    path.write_text("old")
    atomic_write(path, "new")
    atomic_write(tmp_path / "out.bin", b"\x00\x01")
    assert path.read_text() == "new"
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path):
    path = tmp_path / "model.onnx"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_writer_that_removes_the_temporary_file_is_an_error_not_a_crash_in_cleanup(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x") as tmp:
            tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_umasks_permissions(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o644


def test_sha256_file(tmp_path: Path):
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_folder_sha256_covers_names_and_contents_in_sorted_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.npz").write_bytes(b"1")
    (tmp_path / "a.npz").write_bytes(b"2")
    expected = hashlib.sha256(f"a.npz\0{hashlib.sha256(b'2').hexdigest()}\n"
                              f"b/x.npz\0{hashlib.sha256(b'1').hexdigest()}\n".encode()).hexdigest()
    assert folder_sha256(tmp_path) == expected
    assert folder_sha256(tmp_path, [tmp_path / "a.npz", tmp_path / "b" / "x.npz"]) == expected
    (tmp_path / "b" / "x.npz").rename(tmp_path / "b" / "y.npz")
    assert folder_sha256(tmp_path) != expected


def test_a_single_file_counts_under_its_name(tmp_path: Path):
    (tmp_path / "data.npz").write_bytes(b"3")
    expected = hashlib.sha256(f"data.npz\0{hashlib.sha256(b'3').hexdigest()}\n".encode()).hexdigest()
    assert folder_sha256(tmp_path / "data.npz", [tmp_path / "data.npz"]) == expected
