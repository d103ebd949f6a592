"""Turn expected failures (bad config, bad data, missing or damaged folders) into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
import sys

import typer


def _expected() -> tuple[type[BaseException], ...]:
    from visembed.checkpoint import ModelFolderError  # also damaged weights and config.json
    from visembed.config import ConfigError
    from visembed.data import BadImage, DataError

    kinds = [ConfigError, ModelFolderError, DataError, BadImage, FileNotFoundError, ValueError]
    store = sys.modules.get("visembed.index.backends.base")  # only an index command can raise its errors
    if store is not None:
        kinds.append(store.IndexStoreError)
    return tuple(kinds)


@contextlib.contextmanager
def friendly_errors():
    try:
        yield
    except Exception as err:
        if not isinstance(err, _expected()):
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
