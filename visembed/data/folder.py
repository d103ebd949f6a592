"""A folder of images: with same-name `.txt` captions (img2dataset's "files" output layout), or in
class folders (torchvision's ImageFolder layout), or plain images.

Captions: `0001.jpg` + `0001.txt` (+ an optional `0001.json`, ignored) make one sample whose id is
the path relative to the folder without extension, so ids are stable and sorted. An image without
its `.txt` is skipped and counted when the caller needs captions (`need="caption"`, training a
contrastive model) and kept with an empty caption otherwise (image-only training, classifiers).

Classes: `root/<class>/*.jpg`, every image exactly one folder below the root and no caption file
anywhere, labels each image with its folder's name (`_` read as a space: `golden_retriever` ->
"golden retriever"). A `classes.txt` in the root renames them: one `folder<TAB>class name` line
each, or one name a line for the class folders in sorted order.

Splits: a root holding `train/`, `val/` (or `validation/`) and/or `test/` folders keeps each split
in its own folder (the layout above applies inside each); any other folder has no split, and every
image belongs to every split requested.
"""

from __future__ import annotations

from pathlib import Path

from .images import SkipCounter
from .sample import DataError, ListDataset, Sample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "validation": ("val", "validation"),
                 "test": ("test",)}
SPLIT_NAMES = {name for names in SPLIT_FOLDERS.values() for name in names}
MAX_CLASSES_FILE_BYTES = 10 << 20


def open_folder(folder: str | Path, split: str = "train", *, language: str = "en", need: str = "caption") -> ListDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}")
    root = _split_root(folder, split)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    classes = _class_names(folder, root, images)
    skipped = SkipCounter()
    samples = []
    for image in images:
        caption_file = image.with_suffix(".txt")
        caption = ""
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
            if not caption and need == "caption":
                skipped.add("empty_caption")
                continue
        elif need == "caption":
            skipped.add("missing_caption")
            continue
        relative = image.relative_to(root)
        label = classes[relative.parts[0]] if classes else None
        sample_id = image.relative_to(folder).with_suffix("").as_posix()
        samples.append(Sample(id=sample_id, image=str(image), caption=caption, label=label, path=str(image)))
    labels = sorted(set(classes.values())) if classes else None
    return ListDataset(samples, labels=labels, skipped=skipped)


def _split_root(folder: Path, split: str) -> Path:
    """The folder that holds `split`'s images: `folder/<split>` in a split layout, else `folder`."""
    present = {p.name for p in folder.iterdir() if p.is_dir() and p.name in SPLIT_NAMES}
    if not present:
        return folder
    if split == "all":
        return folder
    for name in SPLIT_FOLDERS.get(split, (split,)):
        if name in present:
            return folder / name
    raise DataError(f"{folder}: no {split!r} folder (split folders present: {', '.join(sorted(present))})")


def _class_names(folder: Path, root: Path, images: list[Path]) -> dict[str, str] | None:
    """Folder name -> class name when `root` is in the class-folder layout, else None."""
    relative = [image.relative_to(root).parts for image in images]
    if any(len(parts) != 2 for parts in relative) or any(image.with_suffix(".txt").is_file() for image in images):
        return None
    folders = sorted({parts[0] for parts in relative})
    if root == folder and set(folders) & SPLIT_NAMES:
        return None  # split="all" over a split layout: the first level is the split, not a class
    names = {name: name.replace("_", " ") for name in folders}
    listing = folder / "classes.txt"
    if listing.is_file():
        names = _read_classes_file(listing, folders)
    return names


def _read_classes_file(listing: Path, folders: list[str]) -> dict[str, str]:
    if listing.stat().st_size > MAX_CLASSES_FILE_BYTES:
        raise DataError(f"{listing}: larger than {MAX_CLASSES_FILE_BYTES >> 20} MiB")
    lines = [line.strip() for line in listing.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if lines and all("\t" in line for line in lines):
        names = dict(tuple(part.strip() for part in line.split("\t", 1)) for line in lines)
        unnamed = [name for name in folders if name not in names]
        if unnamed:
            raise DataError(f"{listing}: no line for class folder(s) {', '.join(unnamed[:5])}")
        return {name: names[name] for name in folders}
    if len(lines) != len(folders):
        raise DataError(f"{listing}: {len(lines)} names for {len(folders)} class folders "
                        f"(write one `folder<TAB>name` line each, or one name a line in sorted folder order)")
    return dict(zip(folders, lines))
