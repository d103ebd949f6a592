"""An open vocabulary of names for a captioner's hints: what the prompt may name beyond the training captions.

A captioner trained on ~3,400 emoji names can only recombine them; the dual encoder, though, scores any
text against an image (CLIP's zero-shot recipe). So the hints of a prompt ("Similar: ...") are drawn
from the training captions *and* a large list of names no image was trained on:

    emoji    every CLDR emoji name the `emoji` package knows, English and Chinese (~4,000 distinct each)
    cedict   CC-CEDICT's English senses and Chinese headwords (~64,000 / ~94,000; `data/dictionary.py`)
    FILE     a user's own list: one name a line, UTF-8 (a line with CJK characters is Chinese)

The names' vectors depend only on the dual encoder's text side: they are computed once per model and
vocabulary and kept under `paths.cache_root()/vocabulary/` (float16 .npy, read without pickle); on 2
cores the demo model's MiniLM side encodes ~750 English names/s and its CJK student ~2,500 Chinese
names/s, so `emoji` costs ~10 s once and `cedict` ~2 minutes once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

SOURCES = ("emoji", "cedict")  # built-in vocabularies; anything else is a file
OPEN = ("emoji",)  # the open vocabulary the benchmark's "open" rows use
MAX_FILE_BYTES = 64 * 1024 * 1024  # a user's list larger than this is refused
MAX_NAME_CHARS = 100
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class VocabularyError(ValueError):
    """A vocabulary that cannot be read (an unknown source, a missing or oversized file)."""


def emoji_names() -> dict[str, list[str]]:
    """Every CLDR emoji name of the `emoji` package, by language ("dog face", "狗脸")."""
    import emoji

    emoji.config.load_language("zh")
    out: dict[str, dict[str, None]] = {"en": {}, "zh": {}}
    for data in emoji.EMOJI_DATA.values():
        for language in out:
            name = data.get(language)
            if name:
                out[language][name.strip(":").replace("_", " ").strip()] = None
    return {language: list(names) for language, names in out.items()}


def cedict_names() -> dict[str, list[str]]:
    """CC-CEDICT's Chinese headwords and (distinct) first English senses."""
    from visembed.data.dictionary import cedict_pairs

    pairs = cedict_pairs(10**9)  # all of them
    return {"en": list(dict.fromkeys(english for _, english in pairs)), "zh": [chinese for chinese, _ in pairs]}


def file_names(path: str | Path) -> dict[str, list[str]]:
    """A user's list: one name a line (blank lines and `#` comments skipped), split by script."""
    path = Path(path)
    check_sources([str(path)])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise VocabularyError(f"cannot read vocabulary file {path}: {err}") from None
    out: dict[str, dict[str, None]] = {"en": {}, "zh": {}}
    for line in lines:
        name = " ".join(line.split())[:MAX_NAME_CHARS]
        if name and not name.startswith("#"):
            out["zh" if _CJK.search(name) else "en"][name] = None
    return {language: list(names) for language, names in out.items()}


def check_sources(sources) -> None:
    """A VocabularyError for a source that is neither built in nor a readable file of a sane size
    (before anything slow is loaded)."""
    for source in sources:
        if source in (*SOURCES, "none"):
            continue
        path = Path(source)
        if not path.is_file():
            raise VocabularyError(f"vocabulary {source!r} is neither {', '.join(SOURCES)}, none nor a file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise VocabularyError(f"vocabulary file {path} is larger than {MAX_FILE_BYTES // 2**20} MiB")


def read_vocabulary(sources) -> dict[str, list[str]]:
    """The names of `sources` ("emoji", "cedict", file paths; "none" alone: no names), merged by
    language, each name once, in source order."""
    check_sources(sources)
    merged: dict[str, dict[str, None]] = {}
    for source in sources:
        if source == "none":
            continue
        names = emoji_names() if source == "emoji" else cedict_names() if source == "cedict" else file_names(source)
        for language, texts in names.items():
            merged.setdefault(language, {}).update(dict.fromkeys(texts))
    return {language: list(texts) for language, texts in merged.items() if texts}


def text_side_digest(encoder: torch.nn.Module) -> str:
    """A digest of what decides a text's vector: every weight of the dual encoder but the image side's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        if name.startswith(("vision.", "visual_projection.")):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_vectors(texts: list[str], model_digest: str, encode, cache_dir: Path | None) -> torch.Tensor:
    """(T, D) float32 vectors of `texts` by `encode`, from `cache_dir` when made before for the same
    model and texts (else computed and kept there; no cache_dir: computed)."""
    if cache_dir is None:
        return encode(texts)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{model_digest}-{key}.npy"
    if path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
            if array.ndim == 2 and len(array) == len(texts):
                return torch.from_numpy(array.astype(np.float32))
        except (OSError, ValueError):
            pass  # damaged: made again
    from visembed.atomic import atomic_write_npy

    vectors = encode(texts).half().float()  # as a cached copy reads back: the same hints either way
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_npy(path, vectors.cpu().numpy().astype(np.float16))
    return vectors
