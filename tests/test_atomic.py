"""The one atomic-write helper: a target is either the old file or the complete new one, and no
temporary file is ever left beside it."""

import json
import os

import numpy as np
import pytest

from visembed.atomic import (atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_npy,
                             atomic_write_text, replace_dir)


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_leave_only_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "狗\n")
    atomic_write_json(tmp_path / "c.json", {"name": "狗", "n": 1})
    atomic_write_npy(tmp_path / "d.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    atomic_write(tmp_path / "e.out", lambda tmp: open(tmp, "w").write("via a callback"))
    assert names(tmp_path) == ["a.bin", "b.txt", "c.json", "d.npy", "e.out"]  # np.save added no ".npy"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "狗\n"
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"name": "狗", "n": 1} and "狗" in text and text.endswith("\n")
    assert np.load(tmp_path / "d.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (tmp_path / "e.out").read_text() == "via a callback"


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old weights")

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old weights" and names(tmp_path) == ["model.bin"]
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is replaced
        atomic_write_json(target, {"x": object()})
    assert target.read_bytes() == b"old weights" and names(tmp_path) == ["model.bin"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "x.bin", lambda tmp: None)
    assert names(tmp_path) == []


def test_new_files_get_the_usual_permissions(tmp_path):
    """Model files are shared with other users and services: not owner-only like mkstemp's."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_replace_dir_moves_a_complete_folder(tmp_path):
    tmp = tmp_path / ".tmp_step"
    tmp.mkdir()
    atomic_write_bytes(tmp / "state.pt", b"s")
    replace_dir(tmp, tmp_path / "step")
    assert names(tmp_path) == ["step"] and (tmp_path / "step" / "state.pt").read_bytes() == b"s"
