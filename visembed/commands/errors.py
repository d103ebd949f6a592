"""Turn expected failures (bad config, bad data, missing or damaged folders) into one clear line and exit code 2.

Expected means named: visembed's own errors, the ValueErrors of bad values, and a few failures of the
machine that a user causes and can fix, each said in our words: a path under a file (`--out a.txt/x`),
a folder without permission, and torch's refusal to allocate a model far larger than the memory (a
config of width 10^6). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys

import typer

MACHINE_ERRORS = (NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _expected() -> tuple[type[BaseException], ...]:
    from visembed.checkpoint import ModelFolderError  # also damaged weights and config.json
    from visembed.config import ConfigError
    from visembed.data import BadImage, DataError

    kinds = [ConfigError, ModelFolderError, DataError, BadImage, FileNotFoundError, ValueError, *MACHINE_ERRORS]
    store = sys.modules.get("visembed.index.backends.base")  # only an index command can raise its errors
    if store is not None:
        kinds.append(store.IndexStoreError)
    return tuple(kinds)


def _out_of_memory(err: BaseException) -> str | None:
    """torch's allocator refusing a tensor (a config far beyond the machine): its size, in our words."""
    import re

    if type(err) is not RuntimeError or "can't allocate memory" not in str(err):
        return None
    wanted = re.search(r"allocate (\d+) bytes", str(err))
    size = f" ({int(wanted.group(1)) / 1e9:,.1f} GB for one tensor)" if wanted else ""
    return (f"out of memory{size}: the model's sizes are too large for this machine; check the config and --set "
            "values of model.*.width, depth, heads and vocab_size")


def describe(err: BaseException) -> str:
    """One line for an expected error."""
    if isinstance(err, MACHINE_ERRORS) and err.filename is not None:
        reason = {NotADirectoryError: "a part of the path is a file, not a folder",
                  IsADirectoryError: "it is a folder, a file is expected",
                  PermissionError: "permission denied",
                  FileExistsError: "it already exists"}[type(err)]
        return f"cannot use {err.filename}: {reason}"
    return " ".join(str(err).split("\n")) if "\n" in str(err) else str(err)


def output_folder(path, option: str = "--out") -> None:
    """Fail before any work when `path` cannot become a folder: a part of it is an existing file."""
    from pathlib import Path

    for parent in [Path(path), *Path(path).parents]:
        if parent.exists():
            if not parent.is_dir() and parent != Path(path):
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            return


def text_argument(value: str | None, option: str) -> str | None:
    """A text option as the OS passed it: invalid UTF-8 reaches Python as lone surrogates, which no
    tokenizer or JSON encoder accepts; say so here, naming the option."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{option} is not valid UTF-8 text: {value.encode('utf-8', 'replace').decode()[:60]!r}") from None
    return value


@contextlib.contextmanager
def friendly_errors():
    try:
        yield
    except Exception as err:
        message = _out_of_memory(err)
        if message is None:
            if not isinstance(err, _expected()):
                raise
            message = describe(err)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(2)
