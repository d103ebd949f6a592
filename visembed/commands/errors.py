"""Turn expected failures (bad config, bad data, missing folders) into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
import sys

import typer


@contextlib.contextmanager
def friendly_errors():
    from visembed.checkpoint import ModelFolderError
    from visembed.config import ConfigError
    from visembed.data import BadImage, DataError
    from visembed.index.store import IndexStoreError

    expected = (ConfigError, ModelFolderError, DataError, BadImage, IndexStoreError, FileNotFoundError, ValueError)
    try:
        yield
    except expected as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
