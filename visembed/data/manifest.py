"""Image + caption tables: JSONL, CSV or Parquet manifests, and HF imagefolder `metadata.jsonl`.

Image paths are relative to the manifest's folder. Column names are configurable; when the
configured image/caption columns are absent but HF imagefolder's `file_name`/`text` are present,
those are used. A manifest with a `split` column is filtered by it (`val` and `validation` are the
same split); without one, every row belongs to every split requested.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .images import SkipCounter, image_file
from .sample import DataError, ListDataset, Sample

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
IMAGEFOLDER_FALLBACK = {"image": "file_name", "caption": "text"}  # HF imagefolder metadata names
SPLIT_ALIASES = {"val": "validation", "validation": "val", "dev": "validation"}


def read_rows(path: Path) -> list[dict]:
    """All rows of a manifest as dicts; a malformed file fails with its name (and line)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from e
                        if not isinstance(row, dict):
                            raise DataError(f"{path}:{number}: a line must be a JSON object "
                                            f"({{\"image\": ..., \"caption\": ...}}), not a {type(row).__name__}")
                        rows.append(row)
            return rows
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()  # rows of a table are always mappings
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read manifest ({type(e).__name__}: {e})") from e
    raise DataError(f"{path}: a manifest must end in {', '.join(MANIFEST_SUFFIXES)}")


def rows_of_split(rows: list[dict], split: str, path: Path) -> list[dict]:
    """The rows whose `split` is `split` (or its alias); "all" keeps every row. For files with a split field."""
    if split == "all":
        return rows
    wanted = {split, SPLIT_ALIASES.get(split, split)}
    present = sorted({str(row.get("split")) for row in rows})
    rows = [row for row in rows if str(row.get("split")) in wanted]
    if not rows:
        raise DataError(f"{path}: no rows with split {split!r} (splits present: {', '.join(present)})")
    return rows


def _pick_column(columns: set[str], wanted: str, role: str, path: Path) -> str:
    if wanted in columns:
        return wanted
    fallback = IMAGEFOLDER_FALLBACK[role]
    if fallback in columns:
        return fallback
    raise DataError(
        f"{path}: no {role} column {wanted!r} (columns: {', '.join(sorted(columns)) or 'none'}); "
        f"set {role}_column to the right name"
    )


def _image_source(value, folder: Path):
    """A manifest cell -> (image for Sample, file path or None)."""
    if isinstance(value, dict):  # HF `datasets` Image feature stored in parquet: {"bytes", "path"}
        if value.get("bytes"):
            return value["bytes"], None
        value = value.get("path")
    if not value:
        return None, None
    try:
        path = (folder / str(value)).resolve()
    except ValueError:  # a NUL byte or a lone surrogate: no file has that name
        return None, "bad_path"
    return str(path), str(path)


def open_manifest(
    path: str | Path,
    split: str = "train",
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
    id_column: str | None = None,
    language: str = "en",
    need: str = "caption",
) -> ListDataset:
    """Read a manifest into a map-style dataset; rows without image or image file, and without
    caption when the caller needs captions (`need="caption"`), are skipped and counted in `skipped`
    (once per row); a manifest with no usable row is a DataError. Otherwise the caption column may be
    absent, and a row without caption is kept with an empty one (image-only training, classifiers).

    `language` is accepted for a uniform signature: a manifest's captions are used as written.
    A column named `label` (or `id`) is used without being asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such manifest file: {path}")
    rows = read_rows(path)
    columns = set().union(*(row.keys() for row in rows)) if rows else set()
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    image_key = _pick_column(columns, image_column, "image", path)
    caption_key = None
    if need == "caption" or caption_column in columns or IMAGEFOLDER_FALLBACK["caption"] in columns:
        caption_key = _pick_column(columns, caption_column, "caption", path)
    for optional in (label_column, id_column):
        if optional is not None and optional not in columns:
            raise DataError(f"{path}: no column {optional!r} (columns: {', '.join(sorted(columns))})")
    if label_column is None and "label" in columns:
        label_column = "label"
    if id_column is None and "id" in columns:
        id_column = "id"

    if "split" in columns:
        rows = rows_of_split(rows, split, path)

    folder = path.parent
    skipped = SkipCounter()
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    first_missing = None
    for number, row in enumerate(rows):
        caption = row.get(caption_key) if caption_key else None
        caption = "" if caption is None else str(caption).strip()
        if not caption and need == "caption":
            skipped.add("empty_caption")
            continue
        cell = row.get(image_key)
        image, file_path = _image_source(cell, folder)
        if image is None:
            skipped.add("bad_path" if file_path == "bad_path" else "missing_image")
            continue
        if file_path is not None and image_file(Path(file_path).parent, Path(file_path).name)[1] == "bad_path":
            skipped.add("bad_path")  # a NUL byte, a lone surrogate, a name too long for the file system
            continue
        if file_path is not None and not Path(file_path).is_file():
            # counted once per row here, not once per draw while training
            skipped.add("missing_file")
            first_missing = first_missing or file_path
            continue
        raw_id = row.get(id_column) if id_column else None
        if raw_id in (None, ""):
            raw_id = cell if isinstance(cell, str) else f"row{number}"
        base_id = str(raw_id)
        count = seen.get(base_id, 0)
        seen[base_id] = count + 1
        sample_id = base_id if count == 0 else f"{base_id}#{count}"  # one image with several captions
        label = row.get(label_column) if label_column else None
        samples.append(
            Sample(
                id=sample_id,
                image=image,
                caption=caption,
                label=None if label in (None, "") else str(label),
                path=file_path,
                meta={"source": str(path)},
            )
        )
    if not samples:
        cause = f"first missing: {first_missing}" if first_missing else skipped.summary()
        raise DataError(f"none of the {len(rows)} rows of {path} has a usable image: {cause}")
    labels = None
    if label_column:
        labels = sorted({s.label for s in samples if s.label is not None}) or None
    return ListDataset(samples, labels=labels, skipped=skipped)
