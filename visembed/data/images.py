"""Decode any image input into a plain RGB picture, or say precisely why it cannot be used.

Real image collections are full of surprises (zero-byte downloads, truncated JPEGs, 16-bit PNGs,
CMYK scans, decompression bombs). `load_image` turns each into either an RGB `PIL.Image` or a
`BadImage` with a short reason, so data loaders can skip and count instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000 x 7000: beyond this decoding costs too much memory to be worth it


class BadImage(Exception):
    """An input that cannot be used as an image; `reason` is a short key for `SkipCounter`."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SkipCounter:
    """Counts skipped items by reason, so a run can report what it left out and why."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self._counts[reason] += n

    def update(self, other: "SkipCounter") -> None:
        self._counts.update(other._counts)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def summary(self) -> str:
        if not self.total:
            return "skipped 0"
        parts = ", ".join(f"{reason}={n}" for reason, n in self.as_dict().items())
        return f"skipped {self.total} ({parts})"

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


def load_image(src, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A path, bytes or PIL image -> RGB PIL image (EXIF orientation applied, alpha on white).

    Raises `BadImage` with reason `missing_file`, `empty_file`, `unreadable`, `truncated` or
    `too_large`; never any other exception for bad data.
    """
    if isinstance(src, Image.Image):
        img = src
    else:
        img = _open(src, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except BadImage:
        raise
    except Exception as e:  # a corrupt EXIF block or an exotic mode
        raise BadImage("unreadable", f"{type(e).__name__}: {e}") from e


def _open(src, max_pixels: int) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise BadImage("empty_file", "0 bytes")
        fp = io.BytesIO(data)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise BadImage("missing_file", str(path))
        if path.stat().st_size == 0:
            raise BadImage("empty_file", str(path))
        fp = io.BytesIO(path.read_bytes())  # read once, so no file handle stays open
    else:
        raise BadImage("unreadable", f"unsupported image source {type(src).__name__}")

    # Pillow's bomb check uses a global limit; ours is per call, so check the header size ourselves
    # and turn Pillow's own warning into an error too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=DECODABLE_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage("too_large", f"{width}x{height} pixels > {max_pixels}")
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated files would half-load")
            img.load()  # decode now: a truncated file fails here, not later in a worker
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage("too_large", str(e)) from e
        except UnidentifiedImageError as e:
            raise BadImage("unreadable", str(e)) from e
        except (OSError, EOFError, SyntaxError, ValueError) as e:
            text = str(e).lower()
            truncated = isinstance(e, EOFError) or "truncated" in text or "broken data stream" in text
            raise BadImage("truncated" if truncated else "unreadable", f"{type(e).__name__}: {e}") from e
    return img


# Formats we decode. Pillow would also open EPS (through Ghostscript), PSD and more: not for
# untrusted uploads. Anything else is `unreadable`.
DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _high_bit_depth_to_l(img)
        mode = "L"
    if mode in ("P", "PA") or mode.endswith("A") or mode.endswith("a") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> 8-bit: Pillow's own convert clips instead of rescaling."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and values.size and values.max() <= 1.0:
        scaled = values * 255.0
    elif img.mode.startswith("I;16") or (values.size and values.max() > 255):
        scaled = values / 257.0  # 65535 -> 255
    else:
        scaled = values
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Eval preprocessing: the centre square, resized to `size` (bicubic) -> uint8 (3, size, size).

    Cropping before resizing (the same picture as "shorter side to size, then centre crop") keeps
    memory bounded: a 1 x 40,000,000 panorama must not be scaled up to 64 x 2.56e9 first."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if (width, height) != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)
