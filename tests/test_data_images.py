import io

import numpy as np
import pytest
import torch
from PIL import Image

from visembed.data import BadImage, Sample, SkipCounter, collate, epoch_order, load_image, to_tensor


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noisy_rgb(width=64, height=64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def reason_of(src, **kwargs) -> str:
    with pytest.raises(BadImage) as info:
        load_image(src, **kwargs)
    return info.value.reason


def test_each_bad_input_has_its_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    jpeg = encode(noisy_rgb(), "JPEG")
    png = encode(noisy_rgb(), "PNG")
    assert reason_of(tmp_path / "nope.jpg") == "missing_file"
    assert reason_of(empty) == "empty_file"
    assert reason_of(b"") == "empty_file"
    assert reason_of(b"this is not an image") == "unreadable"
    assert reason_of(jpeg[: len(jpeg) // 2]) == "truncated"
    assert reason_of(png[: len(png) // 2]) == "truncated"
    big = encode(Image.new("1", (3000, 3000)))  # 9 Mpx that compress to a few KB
    assert reason_of(big, max_pixels=1_000_000) == "too_large"


def test_pillow_decompression_bomb_is_too_large(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own global check, not ours
    assert reason_of(encode(Image.new("RGB", (20, 20))), max_pixels=10**9) == "too_large"


def test_bad_images_are_skipped_and_counted_in_collate(tmp_path):
    good = Sample(id="good", image=encode(noisy_rgb()), caption="noise")
    samples = [
        good,
        Sample(id="broken", image=b"garbage", caption="x"),
        Sample(id="gone", image=str(tmp_path / "missing.png"), caption="x"),
        Sample(id="cut", image=encode(noisy_rgb(), "JPEG")[:300], caption="x"),
        Sample(id="silent", image=encode(noisy_rgb()), caption="  "),
    ]
    counter = SkipCounter()
    pixels, kept = collate(samples, 32, counter)
    captions, ids = [s.caption for s in kept], [s.id for s in kept]
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.uint8
    assert captions == ["noise"] and ids == ["good"]
    assert counter.as_dict() == {"empty_caption": 1, "missing_file": 1, "truncated": 1, "unreadable": 1}
    assert counter.total == 4
    assert counter.summary() == "skipped 4 (empty_caption=1, missing_file=1, truncated=1, unreadable=1)"
    empty, _ = collate(samples[1:3], 32, SkipCounter())
    assert empty.shape == (0, 3, 32, 32)


def test_alpha_and_palette_are_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    la = Image.new("LA", (4, 4), (0, 0))
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    for image in (rgba, la, palette):
        loaded = load_image(encode(image))
        assert loaded.mode == "RGB"
        assert loaded.getpixel((0, 0)) == (255, 255, 255)
    opaque = load_image(encode(Image.new("RGBA", (4, 4), (10, 20, 30, 255))))
    assert opaque.getpixel((1, 1)) == (10, 20, 30)


def test_cmyk_and_high_bit_depth_become_rgb():
    cmyk = load_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((1, 1))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60  # red
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))  # mode I;16
    assert sixteen.mode == "I;16"
    assert load_image(encode(sixteen)).getpixel((0, 0)) == (255, 255, 255)  # rescaled, not clipped
    mid = Image.fromarray(np.full((4, 4), 32896, dtype=np.int32))  # mode I, half of 16-bit range
    assert load_image(mid).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.new("RGB", (20, 10), "blue"), "JPEG", exif=exif)
    assert load_image(data).size == (10, 20)


def test_to_tensor_resizes_shorter_side_and_centre_crops():
    image = Image.new("RGB", (200, 100), "white")
    image.paste((255, 0, 0), (0, 0, 30, 100))  # a red band on the far left is cropped away
    pixels = to_tensor(image, 32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    assert pixels[:, :, 0].tolist() == [[255] * 32] * 3
    assert torch.equal(pixels, to_tensor(image, 32))


def test_epoch_order_is_a_deterministic_permutation():
    order = epoch_order(10, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(10))
    assert np.array_equal(order, epoch_order(10, seed=3, epoch=1))
    assert not np.array_equal(order, epoch_order(10, seed=3, epoch=2))


def test_extreme_aspect_ratio_stays_small():
    """A 1 x 5,000,000 strip must be centre-cropped before resizing, not scaled up to 64 x 320M (61 GB)."""
    from visembed.data import to_tensor

    strip = Image.new("RGB", (1, 5_000_000), "red")
    t = to_tensor(strip, 64)
    assert t.shape == (3, 64, 64) and t[0].float().mean() > 250


def test_formats_outside_the_allow_list_are_unreadable(tmp_path):
    """EPS would be decoded by Ghostscript: never for untrusted input."""
    eps = tmp_path / "x.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(BadImage) as err:
        load_image(eps)
    assert err.value.reason == "unreadable"


def test_files_over_the_byte_limit_are_too_large_before_reading(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(noisy_rgb()))
    assert reason_of(photo, max_bytes=100) == "too_large"
    assert reason_of(photo.read_bytes(), max_bytes=100) == "too_large"
    assert load_image(photo, max_bytes=None).size == (64, 64)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: 300 MB on paper, nothing on disk
        f.truncate(300 * 1024 * 1024)
    with pytest.raises(BadImage, match="bytes") as info:
        load_image(huge)  # the default limit
    assert info.value.reason == "too_large"


def test_a_large_non_image_is_recognised_from_its_header(tmp_path):
    """A manifest once pointed at a 3 GB video: it was read whole into memory before Pillow looked."""
    import tracemalloc

    video = tmp_path / "clip.jpg"
    with open(video, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42")  # an MP4 header
        f.truncate(200 * 1024 * 1024)
    tracemalloc.start()
    try:
        assert reason_of(video, max_bytes=None) == "unreadable"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # a header's worth of reading, not 200 MB


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size: only the header is ever read."""
    import struct
    import zlib

    png = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


@pytest.mark.parametrize("side", [10_000, 20_000])  # over Pillow's warning limit; over its hard limit
def test_decompression_bomb_message_quotes_our_limit(side):
    with pytest.raises(BadImage) as info:
        load_image(_png_claiming(side, side), max_pixels=5_000_000)
    assert info.value.reason == "too_large"
    assert "5,000,000" in str(info.value) and str(Image.MAX_IMAGE_PIXELS) not in str(info.value)


def test_our_pixel_limit_decides_not_pillows_warning(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # Pillow warns above 300 px and refuses above 600
    assert load_image(encode(Image.new("RGB", (20, 20))), max_pixels=10**6).size == (20, 20)  # 400 px: ours allow it


def test_an_unidentified_image_message_names_no_heap_address():
    with pytest.raises(BadImage) as err:
        load_image(b"certainly not an image, just some bytes")
    assert "0x" not in str(err.value) and "PNG" in str(err.value)
