"""The import cache: a model spec (a visembed folder, or `hf:PATH` / `openclip:PATH`, a checkpoint
of another project) -> a visembed model folder.

`resolve_model(spec)` returns a visembed model folder for any of them, so everything downstream
(`visembed.load`, `train --init`, eval, embed, merge, index build) reads one format through one code
path. Only the layers above interop/ see specs: `visembed.api.load` and the commands resolve them
here and hand a plain folder down (models/, eval/ and train/ never import interop/).

A foreign checkpoint is converted once, into `$VISEMBED_CACHE/imported/<kind>-<digest>`, where the
digest covers the content of the files the converter reads: the same checkpoint is found again,
a changed one is converted again. The conversion writes into a temporary folder that is renamed
into place only when complete, so a killed conversion never leaves a half folder to be trusted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from visembed.atomic import replace_dir
from visembed.checkpoint import ModelFolderError
from visembed.paths import cache_root

PREFIXES = ("hf:", "openclip:")
CONVERTER_VERSION = "1"  # bump when a converter writes different folders for the same source
_SKIPPED_SUFFIXES = (".msgpack", ".h5", ".onnx", ".ot", ".md", ".gitattributes")  # other frameworks' weights, docs


def is_foreign(spec: str | os.PathLike) -> bool:
    return str(spec).startswith(PREFIXES)


def source_files(path: Path) -> list[Path]:
    """The files a converter may read: a checkpoint file and the JSON files beside it, or every file
    of a folder, subfolders included (a sharded folder may keep its shards there), except hidden
    ones and other frameworks' weights."""
    if path.is_file():
        return [path] + sorted(path.parent.glob("*.json"))
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(_SKIPPED_SUFFIXES)
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def source_digest(kind: str, path: Path) -> str:
    """sha256 over the relative names and bytes of the files a converter reads (`source_files`)."""
    digest = hashlib.sha256(f"{kind}:{CONVERTER_VERSION}".encode())
    base = path.parent if path.is_file() else path
    for file in source_files(path):
        name = file.relative_to(base).as_posix()
        digest.update(f"\0{name}\0{file.stat().st_size}\0".encode("utf-8", "surrogateescape"))
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:24]


def _convert(kind: str, source: Path, out_dir: Path) -> None:
    if kind == "hf":
        from visembed.interop.hf_import import convert_hf

        convert_hf(source, out_dir)
    else:
        from visembed.interop.openclip import convert_openclip

        convert_openclip(source, out_dir)


def resolve_model(spec: str | os.PathLike) -> Path:
    """A visembed model folder for `spec`: a plain path comes back unchanged; `hf:PATH` (a transformers
    CLIPModel folder) and `openclip:PATH` (an OpenCLIP checkpoint) are converted once and cached."""
    text = str(spec)
    if not is_foreign(text):
        return Path(spec)
    kind, _, rest = text.partition(":")
    source = Path(rest).expanduser()
    if not rest or not source.exists():
        raise ModelFolderError(f"{text}: no such file or folder {str(source)!r} (visembed never downloads from a hub)")
    root = cache_root() / "imported"
    final = root / f"{kind}-{source_digest(kind, source)}"
    if (final / "model.safetensors").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _convert(kind, source, tmp)
        if final.exists():  # another process finished the same conversion meanwhile
            return final
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
