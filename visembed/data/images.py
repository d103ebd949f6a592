"""Decode any image input into a plain RGB picture, or say precisely why it cannot be used.

Real image collections are full of surprises (zero-byte downloads, truncated JPEGs, 16-bit PNGs,
CMYK scans, decompression bombs). `load_image` turns each into either an RGB `PIL.Image` or a
`BadImage` with a short reason, so data loaders can skip and count instead of crashing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000 x 7000: beyond this decoding costs too much memory to be worth it
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # larger than any photo worth training on; checked before reading


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


def load_image(src, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Image.Image:
    """A path, bytes or PIL image -> RGB PIL image (EXIF orientation applied, alpha on white).

    Raises `BadImage` with reason `missing_file`, `empty_file`, `unreadable`, `truncated` or
    `too_large` (over `max_bytes` on disk or `max_pixels` decoded); never any other exception
    for bad data. A file is checked by size, then by its header, and only then decoded: a huge
    file that is not an image costs a few bytes of reading, not its size in memory.
    """
    if isinstance(src, Image.Image):
        return _upright_rgb(src)
    with _opened(src, max_bytes) as fp:
        return _upright_rgb(_decode(fp, max_pixels))  # inside `with`: EXIF may still read the file


def _upright_rgb(img: Image.Image) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except BadImage:
        raise
    except Exception as e:  # a corrupt EXIF block or an exotic mode
        raise BadImage("unreadable", f"{type(e).__name__}: {e}") from e


def image_file(folder: Path, name: str) -> tuple[str | None, str]:
    """(absolute path, "") of the image file `name` names relative to `folder`, or (None, reason) for a
    name no file can have or that names no file: "bad_path" (a NUL byte, a lone surrogate, a name too
    long for the file system) or "missing_file". Data files are hostile: this never raises."""
    try:
        path = (folder / name).resolve()
        os.fsencode(path)  # a lone surrogate (JSON "\\ud800") has no bytes
        return (str(path), "") if path.is_file() else (None, "missing_file")
    except (ValueError, OSError):  # ValueError: NUL byte, UnicodeEncodeError; OSError: ENAMETOOLONG, ELOOP
        return None, "bad_path"


@contextlib.contextmanager
def _opened(src, max_bytes: int | None) -> Iterator[BinaryIO]:
    """A binary file object over `src` after the checks that need no decoding (exists, size)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        size = len(src)
        if not size:
            raise BadImage("empty_file", "0 bytes")
        if max_bytes is not None and size > max_bytes:
            raise BadImage("too_large", f"{size:,} bytes > {max_bytes:,}")
        yield io.BytesIO(src)
        return
    if not isinstance(src, (str, os.PathLike)):
        raise BadImage("unreadable", f"unsupported image source {type(src).__name__}")
    path = Path(src)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise FileNotFoundError(src)
    except OSError:
        raise BadImage("missing_file", str(path)) from None
    except ValueError:  # a NUL byte or a lone surrogate: no file has that name
        raise BadImage("bad_path", repr(str(path))[:200]) from None
    if size == 0:
        raise BadImage("empty_file", str(path))
    if max_bytes is not None and size > max_bytes:
        raise BadImage("too_large", f"{path}: {size:,} bytes > {max_bytes:,}")
    try:
        f = open(path, "rb")
    except OSError as e:  # permissions, a file removed meanwhile
        raise BadImage("unreadable", f"{path}: {e.strerror or e}") from None
    with f:
        yield f


_PILLOW_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def _decode(fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Identify the format from the header, check the pixel count, then decode."""
    # Pillow's own bomb check has one global limit; ours is per call. Its warning is silenced and
    # replaced by our check; its hard error (beyond 2 x PIL.Image.MAX_IMAGE_PIXELS) is reported
    # with our limit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=DECODABLE_FORMATS)  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage("too_large", f"{width}x{height} = {width * height:,} pixels > max_pixels {max_pixels:,}")
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated files would half-load")
            img.load()  # decode now: a truncated file fails here, not later in a worker
        except BadImage:
            raise
        except Image.DecompressionBombError as e:
            found = _PILLOW_BOMB_SIZE.search(str(e))
            pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            limit = f"max_pixels {max_pixels:,}"
            if found and int(found.group(1)) <= max_pixels:
                limit += f", but over Pillow's hard limit {2 * (Image.MAX_IMAGE_PIXELS or 0):,} (PIL.Image.MAX_IMAGE_PIXELS)"
            raise BadImage("too_large", f"{pixels} > {limit}") from e
        except UnidentifiedImageError as e:  # Pillow's text names the file object (a heap address for bytes)
            raise BadImage("unreadable", f"not a {', '.join(DECODABLE_FORMATS)} image") from e
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


EXACT_ASPECT = 8  # up to this ratio of long to short side the resize is transformers' CLIP one, pixel for pixel


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Eval preprocessing: the shorter side resized to `size` (bicubic), then the centre square
    -> uint8 (3, size, size).

    Up to an aspect ratio of `EXACT_ASPECT` this is literally what transformers' `CLIPImageProcessor`
    does (resize to (size, int(size * long / short)), crop at (long' - size) // 2), so an exported
    or imported CLIP sees the same pixels. Beyond it, the centre square is cropped first and then
    resized (the same picture up to sub-pixel placement), which keeps memory bounded: a 1 x 40,000,000
    panorama must not be scaled up to 64 x 2.56e9 first."""
    width, height = img.size
    short, long = min(width, height), max(width, height)
    if (width, height) != (size, size):
        new_long = int(size * long / short)
        if new_long <= EXACT_ASPECT * size:
            shape = (size, new_long) if width <= height else (new_long, size)  # (width, height)
            img = img.resize(shape, Image.Resampling.BICUBIC)
            offset = (new_long - size) // 2
            box = (0, offset, size, offset + size) if width <= height else (offset, 0, offset + size, size)
            img = img.crop(box)
        else:
            left, top = (width - short) // 2, (height - short) // 2
            img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + short, top + short))
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)
