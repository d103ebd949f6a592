"""Search checks over every OpenMoji emoji (`builtin:emoji`, split "all", 3,953 images), reusable by
`emoji_quality.py` and, later, the demo.

Two checks, both text -> image among all the emoji at once:
  * own name: each emoji is searched for by its own English CLDR name; Recall@1/5 reported apart for
    training concepts and held-out (val + test) concepts. A hit is any image carrying that exact
    name (CLIP_benchmark's rule, `visembed.eval.retrieval`); in the data as shipped every English
    name is unique (checked: 3,953 names for 3,953 images), so this is the emoji itself.
  * everyday queries: 40 words people type ("pizza" / "披萨", "dog" / "狗", ...), stored in
    `everyday_queries.json` beside this file, each with the emoji accepted as right answers (by
    CLDR English name; an accepted emoji also accepts its skin-tone variants, which share its
    concept key). Success = an accepted emoji among the top 3, in English and in Chinese.

    The list has two halves of 20, balanced over food, animals, objects, weather, sports, transport
    and feelings. RULE: only the "dev" half may be looked at when choosing recipes (configs,
    prompts, data, hyper-parameters); the "heldout" half is reported separately and is NEVER used
    for tuning, so it stays an honest estimate. Do not edit the held-out entries to fit a model.

`load_everyday_queries` fails loudly (ValueError) on a malformed entry or an accepted name that is
not in the built-in data, so a renamed emoji (new `emoji` package) cannot silently turn a query
into one nobody can pass.

    gallery = openmoji_gallery(model)            # embeds the 3,953 images once
    own_name_recall(model, gallery)              # {"own_train_R@1": ..., "own_heldout_R@5": ...}
    everyday_success(model, gallery)             # {"everyday_en_dev": ..., "everyday_zh_all": ...}
    everyday_results(model, gallery, language="zh")   # per query: top 3 and whether it passed
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUERIES_FILE = Path(__file__).with_name("everyday_queries.json")
HALVES = ("dev", "heldout")
EVERYDAY_K = 3  # success: an accepted emoji among the top 3
CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class EverydayQuery:
    en: str
    zh: str
    accept: tuple[str, ...]  # CLDR English names, as `visembed.data.emoji.emoji_catalogue()` spells them
    half: str  # "dev" (may guide choices) or "heldout" (reported only)


@dataclass(frozen=True)
class Gallery:
    """Every OpenMoji emoji embedded once: concepts[i] is the emoji of vectors[i]."""

    concepts: list  # visembed.data.emoji.EmojiConcept, each with .en, .zh, .concept, .split
    vectors: np.ndarray  # (N, D) float32, L2-normalised


def load_everyday_queries(path: str | Path = QUERIES_FILE, names: set[str] | None = None) -> list[EverydayQuery]:
    """The everyday queries, checked: each has English text, Chinese text (CJK characters), a half
    ("dev" or "heldout") and at least one accepted name, every one of which is an English name in
    `names` (default: the built-in emoji data's). Raises ValueError listing every problem."""
    if names is None:
        from visembed.data.emoji import emoji_catalogue

        names = {c.en for c in emoji_catalogue()}
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    problems, queries = [], []
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of queries")
    for i, item in enumerate(raw):
        where = f"{path}: query {i} ({item.get('en', '?') if isinstance(item, dict) else item!r})"
        if not isinstance(item, dict) or set(item) != {"en", "zh", "accept", "half"}:
            problems.append(f"{where}: needs exactly the keys en, zh, accept, half")
            continue
        en, zh, accept, half = item["en"], item["zh"], item["accept"], item["half"]
        if not isinstance(en, str) or not en.strip() or CJK.search(en):
            problems.append(f"{where}: en must be non-empty English text")
        if not isinstance(zh, str) or not CJK.search(zh):
            problems.append(f"{where}: zh must contain Chinese characters")
        if half not in HALVES:
            problems.append(f"{where}: half must be one of {HALVES}, not {half!r}")
        if not isinstance(accept, list) or not accept or not all(isinstance(a, str) for a in accept):
            problems.append(f"{where}: accept must be a non-empty list of emoji names")
            continue
        unknown = [a for a in accept if a not in names]
        if unknown:
            problems.append(f"{where}: accepted names not in builtin:emoji: {unknown}")
        queries.append(EverydayQuery(en, zh, tuple(accept), half))
    duplicates = {q.en for q in queries if sum(p.en == q.en for p in queries) > 1}
    if duplicates:
        problems.append(f"{path}: queries listed twice: {sorted(duplicates)}")
    if problems:
        raise ValueError("bad everyday query list:\n  " + "\n  ".join(problems))
    return queries


def openmoji_gallery(model, limit: int = 0) -> Gallery:
    """Embed every OpenMoji emoji (split "all"; the first `limit` when given) at the model's render size."""
    from visembed.data.emoji import EmojiDataset, emoji_render_size

    ds = EmojiDataset("all", size=emoji_render_size(model.image_size), limit=limit)
    concepts = [c for _, c, _ in ds.items]
    return Gallery(concepts, model.encode_image([str(path) for _, _, path in ds.items]))


def own_name_recall(model, gallery: Gallery, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Each emoji searched by its own English name among all of them: R@k over training concepts
    (`own_train_*`) and held-out val+test concepts (`own_heldout_*`), with the query counts."""
    from visembed.eval.retrieval import query_ranks

    captions = [c.en for c in gallery.concepts]
    texts = list(dict.fromkeys(captions))
    _, ranks, _ = query_ranks(gallery.vectors, captions, model.encode_text(texts))
    split_of = {}
    for c in gallery.concepts:
        split_of.setdefault(c.en, c.split)  # a repeated name's first image decides (none repeat today)
    heldout = np.array([split_of[t] != "train" for t in texts])
    out: dict = {}
    for name, mask in (("train", ~heldout), ("heldout", heldout)):
        out[f"own_{name}_n"] = int(mask.sum())
        for k in ks:
            out[f"own_{name}_R@{k}"] = float((ranks[mask] <= k).mean()) if mask.any() else None
    return out


def accepted_rows(gallery: Gallery, query: EverydayQuery) -> np.ndarray:
    """Gallery rows that answer `query`: the accepted emoji and their skin-tone variants."""
    keys = {c.concept for c in gallery.concepts if c.en in query.accept}
    return np.array([c.concept in keys for c in gallery.concepts])


def everyday_results(model, gallery: Gallery, queries: list[EverydayQuery] | None = None, *,
                     language: str = "en", k: int = EVERYDAY_K) -> list[dict]:
    """Per query: its text, half, the top-k emoji (char and English name) and whether one of them
    is accepted (`hit`)."""
    queries = load_everyday_queries() if queries is None else queries
    texts = [q.en if language == "en" else q.zh for q in queries]
    scores = model.encode_text(texts) @ gallery.vectors.T  # (Q, N)
    results = []
    for q, text, row in zip(queries, texts, scores):
        top = np.argsort(-row, kind="stable")[:k]
        good = accepted_rows(gallery, q)
        results.append({"query": text, "en": q.en, "half": q.half, "hit": bool(good[top].any()),
                        "top": [f"{gallery.concepts[i].char} {gallery.concepts[i].en}" for i in top]})
    return results


def everyday_success(model, gallery: Gallery, queries: list[EverydayQuery] | None = None, *,
                     k: int = EVERYDAY_K, details: dict | None = None) -> dict:
    """Success rates (accepted emoji in the top k) per language, for the dev half, the held-out half
    and all: `everyday_en_dev`, `everyday_en_heldout`, `everyday_en_all`, then `everyday_zh_*`.
    Per-query results go into `details[language]` when a dict is given."""
    queries = load_everyday_queries() if queries is None else queries
    out: dict = {}
    for language in ("en", "zh"):
        results = everyday_results(model, gallery, queries, language=language, k=k)
        if details is not None:
            details[language] = results
        for half in (*HALVES, "all"):
            hits = [r["hit"] for r in results if half in ("all", r["half"])]
            out[f"everyday_{language}_{half}"] = sum(hits) / len(hits) if hits else None
    return out
