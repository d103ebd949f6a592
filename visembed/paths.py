"""Where visembed keeps what it can make again: rendered built-in images, cached tower features."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$VISEMBED_CACHE`, or `~/.cache/visembed`."""
    return Path(os.environ.get("VISEMBED_CACHE") or Path.home() / ".cache" / "visembed")
