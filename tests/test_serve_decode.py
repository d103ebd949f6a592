"""Upload decoding: reduced early (JPEG draft, integer reduce) so large images never get copied at
full size, EXIF orientation still applied, and a shared budget that refuses rather than queues."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

from visembed.serve.decode import DecodeBudget, UploadRejected, decode_upload


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def two_tone(size):
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 60, 220), (0, 0, size[0] // 2, size[1]))  # left half blue
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_large_images_come_out_reduced_with_their_content_and_orientation(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    data = encoded(two_tone((3000, 2000)), fmt, exif=exif.tobytes())
    image = decode_upload(data, max_pixels=40_000_000, model_side=64, budget=DecodeBudget(10**8), wait_s=0)
    assert image.mode == "RGB" and image.size[0] < image.size[1]  # portrait after the EXIF rotation
    assert 256 <= min(image.size) < 512  # reduced to a few times the model's 64 px, no further
    pixels = np.asarray(image, dtype=float)
    top, bottom = pixels[: image.size[1] // 4].mean(axis=(0, 1)), pixels[-image.size[1] // 4 :].mean(axis=(0, 1))
    assert top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2]  # the blue half went to the top


def test_transparent_pixels_go_on_white_after_reduction():
    image = Image.new("RGBA", (2000, 1000), (0, 0, 0, 0))
    out = decode_upload(encoded(image, "PNG"), max_pixels=10**8, model_side=64, budget=DecodeBudget(10**8), wait_s=0)
    assert np.asarray(out).min() == 255


def test_the_budget_refuses_after_the_wait_and_frees_on_release():
    budget = DecodeBudget(100)
    data = encoded(Image.new("RGB", (20, 20)), "PNG")
    holding, release = threading.Event(), threading.Event()

    def hold():
        with budget.reserve(100, wait_s=0):
            holding.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    holding.wait(30)
    with pytest.raises(UploadRejected) as refused:
        decode_upload(data, max_pixels=10**6, model_side=8, budget=budget, wait_s=0)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"].isdigit()
    release.set()
    worker.join(30)
    assert budget.in_use == 0
    assert decode_upload(data, max_pixels=10**6, model_side=8, budget=budget, wait_s=0).size == (20, 20)
