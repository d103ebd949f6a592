"""Decoding uploaded images with bounded memory.

An upload is small on the wire and large in memory: a 170 KB RGBA PNG just under the 40-megapixel
cap decodes to 160 MB, and the conversions after it (RGBA -> composite on white -> RGB) used to
hold several copies. Six such uploads at once took the server from 0.9 to 5 GB. So here:

- the header is read first and the pixel cap checked before anything is decoded, with our limit
  in the message (Pillow's own bomb check, at ~89 MP, would otherwise speak first);
- JPEGs are decoded at reduced scale (`draft`: the DCT skips the detail we would throw away);
- every other format is decoded once and immediately `reduce`d (box filter, integer factor) to a
  few times the model's input size, *before* any mode conversion, so the copies are small;
- all requests share one `DecodeBudget` of pixels being decoded at a time; a request that cannot
  get its share within a short wait is answered 503 with `Retry-After` instead of queueing
  unbounded memory behind the thread pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import threading
import warnings

from PIL import Image, UnidentifiedImageError

from visembed.data import BadImage, load_image
from visembed.data.images import DECODABLE_FORMATS

KEEP_SIDE_FACTOR = 4  # reduce to no less than 4x the model's input side: plenty for its bicubic resize
RETRY_AFTER_S = 1
TRIM_AFTER_PIXELS = 4_000_000  # after a decode this large, hand freed memory back to the OS


def _malloc_trim():
    """glibc's `malloc_trim(0)`, or a no-op elsewhere. Pillow frees a decoded image block by block;
    glibc keeps those blocks in per-thread arenas (its mmap threshold rises after the first large
    free), so without a trim each request thread keeps the largest image it decoded: the budget
    would bound decoding but not what stays resident (measured: +1.2 GiB for six uploads at the
    cap, +0.02 GiB with the trim)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_trim = _malloc_trim()


class UploadRejected(Exception):
    """An upload the service answers with `status` and `detail` (and `headers`)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class DecodeBudget:
    """Pixels that may be in decoding at once, shared by every request of one app."""

    def __init__(self, capacity_pixels: int):
        self.capacity = int(capacity_pixels)
        self.in_use = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, wait_s: float):
        """Hold `pixels` of the budget for the block; `UploadRejected(503)` if they do not become
        free within `wait_s` seconds. A request larger than the whole budget waits for all of it."""
        pixels = min(int(pixels), self.capacity)
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity, timeout=wait_s):
                raise UploadRejected(503, "the server is decoding as many images as its memory allows; retry shortly",
                                     {"Retry-After": str(RETRY_AFTER_S)})
            self.in_use += pixels
        try:
            yield
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                _trim()  # before the next decode starts: its thread may use another arena
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


def decode_upload(data: bytes, *, max_pixels: int, model_side: int, budget: DecodeBudget, wait_s: float) -> Image.Image:
    """Upload bytes -> a small RGB image for the model, or `UploadRejected` (413, 415, 422, 503)."""
    if not data:
        raise UploadRejected(422, "the upload is empty: not a usable image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(None, max_pixels) from None
        except UnidentifiedImageError:
            raise UploadRejected(415, "not an image this server reads (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
        except Exception:  # a broken header: Pillow's text would quote internals
            raise UploadRejected(422, "not a usable image: its header is corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large((width, height), max_pixels)
    if width < 1 or height < 1:
        raise UploadRejected(422, "not a usable image: it has no pixels")
    keep = KEEP_SIDE_FACTOR * model_side
    if image.format == "JPEG":
        short = min(width, height)
        image.draft("RGB", (max(1, width * keep // short), max(1, height * keep // short)))
    with budget.reserve(image.size[0] * image.size[1], wait_s):
        try:
            image.load()
            image = _reduced(image, keep)
        except Exception:
            raise UploadRejected(422, "not a usable image: it is truncated or corrupt") from None
    try:  # EXIF orientation (the reduced copy keeps the metadata), mode to RGB: on the small copy
        return load_image(image)
    except BadImage:
        raise UploadRejected(422, "not a usable image: its pixel format cannot be read") from None


def _reduced(image: Image.Image, keep: int) -> Image.Image:
    """Shrink by an integer factor while the shorter side stays >= `keep` (no-op for small images)."""
    factor = min(image.size) // keep
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # modes reduce() does not take (P, 1, I;16): convert, then reduce
        has_alpha = image.mode in ("P", "PA", "LA") and ("transparency" in image.info or "A" in image.mode)
        return image.convert("RGBA" if has_alpha else "RGB").reduce(factor)


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> UploadRejected:
    what = f" ({size[0]}x{size[1]} = {size[0] * size[1]:,} pixels)" if size else ""
    return UploadRejected(413, f"the image is too large{what}: this server decodes at most {max_pixels:,} pixels "
                               "(a decompression-bomb guard)")
