"""JPEG decoding on the GPU for training on CUDA: nvJPEG through `torchvision.io.decode_jpeg`, batched.

On a GPU node the CPU decode is what starves the step (DESIGN.md: ~2,000 images/s of PIL on 16
cores against a step that eats more). So on CUDA, where torchvision imports, the loader's workers
only check each sample and pass a plain JPEG on as its encoded bytes; the main process decodes a
micro-batch's JPEGs in one call on the GPU and resizes them there the way `to_tensor` does (shorter
side to S, bicubic with antialiasing, centre square). What is not a plain JPEG (PNG, CMYK, an EXIF
rotation, a path that is not a JPEG) is decoded by the worker on the CPU as before; a JPEG that the
GPU refuses is decoded by PIL, and skipped and counted if that fails too. Pixels differ from PIL's by
rounding (a few levels of 255), so the choice is `data.jpeg_decode` ("auto": the GPU where
possible; "cpu": never).

PyPI's torchvision does not import beside the CPU torch wheel this project installs (DESIGN.md):
there the import check fails cleanly and workers decode on the CPU. This path is unmeasured: no
GPU was at hand when it was written.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, EXACT_ASPECT, BadImage, SkipCounter, load_image, to_tensor
from .batches import collate

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112

# decode(list of encoded uint8 1-D tensors, device) -> list of uint8 (3, H, W) tensors on `device`
Decode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def torchvision_jpeg_decoder() -> Decode | None:
    """torchvision's batched decoder, or None where torchvision does not import (or has no decode_jpeg)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # ImportError; RuntimeError "operator torchvision::nms does not exist" beside a CPU wheel
        return None

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))

    return decode


class GpuJpegDecoder:
    """Decodes the encoded JPEGs of a micro-batch (prepared by `prepare` in a worker) on `device`."""

    def __init__(self, decode: Decode, device: torch.device, size: int):
        self.decode_many, self.device, self.size = decode, device, size

    @classmethod
    def create(cls, mode: str, device: torch.device | None, size: int, decode: Decode | None = None):
        """A decoder for `data.jpeg_decode` = `mode` on `device` (None: no GPU), or None: CPU workers."""
        if mode == "cpu" or device is None:
            return None
        decode = decode or torchvision_jpeg_decoder()
        return cls(decode, device, size) if decode is not None else None

    @staticmethod
    def prepare(samples: list, size: int, counter: SkipCounter, need: str) -> tuple[list[torch.Tensor], list]:
        """In a worker: per kept sample either its encoded JPEG (uint8 1-D) or its CPU-decoded pixels
        (uint8 (3, S, S)); samples without what is `need`ed, or that do not decode, are counted."""
        out, kept = [], []
        for sample in samples:
            if need == "caption" and not (sample.caption or "").strip():
                counter.add("empty_caption")
                continue
            if need == "label" and not (sample.label or "").strip():
                counter.add("missing_label")
                continue
            data = _plain_jpeg(sample.image)
            if data is not None:
                out.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                kept.append(sample)
                continue
            pixels, ok = collate([sample], size, counter, need="nothing")  # decoded here, as on the CPU path
            if ok:
                out.append(pixels[0])
                kept.append(sample)
        return out, kept

    def decode(self, micro: dict, skipped: SkipCounter, fields: Callable[[list], dict]) -> dict:
        """The micro-batch with its encoded JPEGs decoded and resized on the GPU: "pixels" uint8 (b, 3, S, S)."""
        items, samples = micro["pixels"], micro.pop("_samples")
        encoded = [i for i, item in enumerate(items) if item.dim() == 1]
        images: list[torch.Tensor | None] = [item.to(self.device, non_blocking=True) for item in items]
        for i, image in zip(encoded, self._decoded([items[i] for i in encoded])):
            images[i] = self._resized(image) if image is not None else self._on_cpu(items[i], skipped)
        keep = [i for i, image in enumerate(images) if image is not None]
        if not keep:
            return {"pixels": torch.empty(0, 3, self.size, self.size, dtype=torch.uint8, device=self.device)}
        pixels = torch.stack([images[i] for i in keep])  # (b, 3, S, S)
        if len(keep) == len(items):
            return {**micro, "pixels": pixels}
        return {"pixels": pixels, **fields([samples[i] for i in keep])}  # a sample was dropped: fields follow

    def _decoded(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        if not data:
            return []
        try:
            return self.decode_many(data, self.device)
        except RuntimeError:  # one bad JPEG fails the batch: find it
            out = []
            for one in data:
                try:
                    out.extend(self.decode_many([one], self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _on_cpu(self, data: torch.Tensor, skipped: SkipCounter) -> torch.Tensor | None:
        """A JPEG the GPU refused, through PIL; None (counted) if that fails too."""
        try:
            image = load_image(data.numpy().tobytes())
        except BadImage as err:
            skipped.add(err.reason)
            return None
        return to_tensor(image, self.size).to(self.device)

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> uint8 (3, S, S) as `to_tensor` makes it: shorter side to S, centre square."""
        _, height, width = image.shape
        size, short, long = self.size, min(height, width), max(height, width)
        if (height, width) == (size, size):
            return image
        new_long = max(size, int(size * long / short))
        shape = (new_long, size) if width <= height else (size, new_long)  # (height, width)
        resized = F.interpolate(image[None].float(), size=shape, mode="bicubic", antialias=True, align_corners=False)
        offset = (new_long - size) // 2
        top, left = (offset, 0) if width <= height else (0, offset)
        square = resized[0, :, top:top + size, left:left + size]
        return square.round().clamp(0, 255).to(torch.uint8)


def _plain_jpeg(src) -> bytes | None:
    """The encoded bytes of `src` if it is a JPEG the GPU decodes as PIL would (RGB or grey, no EXIF
    rotation, within the size limits), else None (the worker decodes it on the CPU)."""
    if not isinstance(src, (str, bytes)):
        return None
    try:
        if isinstance(src, str):
            with open(src, "rb") as f:
                if f.read(3) != JPEG_MAGIC:
                    return None
                f.seek(0, 2)
                if f.tell() > DEFAULT_MAX_BYTES:
                    return None
                f.seek(0)
                src = f.read()
        if not src.startswith(JPEG_MAGIC) or len(src) > DEFAULT_MAX_BYTES:
            return None
        with Image.open(io.BytesIO(src), formats=("JPEG",)) as img:  # the header only
            width, height = img.size
            if img.mode not in ("RGB", "L") or width * height > DEFAULT_MAX_PIXELS:
                return None
            if max(width, height) > EXACT_ASPECT * min(width, height):  # to_tensor crops these first
                return None
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
    except Exception:  # anything odd: the CPU path decides, and counts it if it is broken
        return None
    return src
