"""A folder of images with same-name `.txt` captions (img2dataset's "files" output layout).

`0001.jpg` + `0001.txt` (+ an optional `0001.json`, ignored) make one sample whose id is the path
relative to the folder without extension, so ids are stable and sorted. Folders carry no split:
every image belongs to every split requested.
"""

from __future__ import annotations

from pathlib import Path

from .images import SkipCounter
from .sample import DataError, ListDataset, Sample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def open_folder(folder: str | Path, split: str = "train", *, language: str = "en") -> ListDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    skipped = SkipCounter()
    samples = []
    for image in images:
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            skipped.add("missing_caption")
            continue
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        if not caption:
            skipped.add("empty_caption")
            continue
        sample_id = image.relative_to(folder).with_suffix("").as_posix()
        samples.append(Sample(id=sample_id, image=str(image), caption=caption, path=str(image)))
    return ListDataset(samples, skipped=skipped)
