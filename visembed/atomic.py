"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary name in the target's folder, is flushed to disk (fsync), then moved
over the target with `os.replace`, and the folder itself is fsynced so that the rename survives a
power cut too (without it, a crash can leave the folder pointing at the old file, or at nothing).
A failed write removes its temporary file and leaves the old target untouched.

This module imports nothing from visembed, so every layer (checkpoints, data caches, indexes,
commands) can use it. Writers that only take a path (safetensors, `torch.save`, faiss) go through
`atomic_write(path, write)`, which hands them the temporary path.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path` (same folder, so `os.replace` never crosses filesystems).

    The file is not created here: writers create it themselves, with the usual permissions
    (`tempfile.mkstemp` would make every model file readable by its owner only)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a folder's entries (new names, renames) to disk."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals renames itself
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp)` with a temporary path beside `path`, then move the result into place.

    `tmp` ends in `.tmp`: writers that add their own suffix (`np.save("x")` writes "x.npy") must be
    given a file object instead (see `atomic_write_npy`)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(str(tmp))
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer for {path} did not create {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:  # "x": never write into a file someone else is writing
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """JSON as UTF-8 (non-ASCII text kept readable), ending in a newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_npy(path: str | os.PathLike, array: Any) -> Path:
    """A numpy array in .npy format, never pickled."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:  # a file object: np.save(tmp) would append ".npy" to the name
            np.save(f, np.asarray(array), allow_pickle=False)

    return atomic_write(path, write)


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a completely written folder under its final name (an empty or absent one) and fsync
    the parent. The files inside must already be on disk (written with the functions above)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_dir(tmp_dir)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    return final_dir


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no pid at all
        return 0 < pid < 1 << 22
    return True


def remove_stale_temporaries(final: str | os.PathLike) -> int:
    """Remove what killed writers left beside `final`: `.NAME.PID.HEX.tmp` folders and files
    (`temporary_path`) of processes that no longer run on this machine; -> how many went."""
    final = Path(final)
    if not final.parent.is_dir():
        return 0
    removed = 0
    prefix = f".{final.name}."
    for entry in final.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit() or _process_alive(int(parts[0])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


@contextlib.contextmanager
def new_dir(final_dir: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A hidden folder beside `final_dir` to fill; when the block ends without an error it becomes
    `final_dir` (absent or empty; with `replace`, whatever was there goes), else it is removed."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_dir)  # a killed writer's half folder (its process is gone)
    tmp = temporary_path(final_dir)
    tmp.mkdir()
    try:
        yield tmp
        if final_dir.is_dir() and (replace or not any(final_dir.iterdir())):
            shutil.rmtree(final_dir)
        replace_dir(tmp, final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_npy", "atomic_write_text",
           "fsync_dir", "new_dir", "remove_stale_temporaries", "replace_dir", "temporary_path"]
