"""Prompt templates for zero-shot heads: a class's text vector is the mean of its prompts' (CLIP's
ensembling; CLIP's paper: an 80-template ensemble adds ~3.5 points on ImageNet).

English class names get the English list, names with CJK characters the Chinese one. `--templates
FILE`: one template per line with `{}` where the class name goes (blank lines and `#` comments
skipped).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

EN_TEMPLATES = (
    "{}",
    "a picture of {}",
    "an emoji of {}",
    "an icon of {}",
    "a photo of {}",
    "a drawing of {}",
    "an illustration of {}",
    "a cartoon of {}",
    "a symbol of {}",
    "a photo of a {}.",
    "a close-up picture of {}",
    "a small picture of {}",
)
ZH_TEMPLATES = ("{}", "{}的图片", "一张{}的照片", "{}的表情符号", "{}的图标", "{}的插图")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SLUG = re.compile(r"^[a-z0-9]+([-_][a-z0-9]+)+$")
MAX_TEMPLATE_CHARS = 200
MAX_TEMPLATES = 500
MAX_CLASS_NAMES_BYTES = 10 << 20


def prompt_name(classname: str) -> str:
    """The class name as prompts say it: slugs ("animal-mammal", "golden_retriever") with spaces."""
    name = classname.strip()
    return re.sub(r"[-_]", " ", name) if _SLUG.match(name) else name.replace("_", " ")


def default_templates(classname: str) -> tuple[str, ...]:
    return ZH_TEMPLATES if _CJK.search(classname) else EN_TEMPLATES


def _read_lines(path: str | Path, what: str, max_bytes: int, limit: str) -> list[str]:
    """The non-blank, non-`#` lines of a small UTF-8 text file, stripped; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {path}")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{path}: too large for a {what} file (at most {limit})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (a {what} file holds one entry a line)") from None
    return [line for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Templates from a file (one a line, each with one `{}`); a ValueError says what is wrong."""
    templates = tuple(_read_lines(path, "templates", MAX_TEMPLATES * (MAX_TEMPLATE_CHARS + 1),
                                  f"{MAX_TEMPLATES} lines"))
    if not templates:
        raise ValueError(f"{path}: no templates (one a line, with {{}} where the class name goes)")
    bad = [t for t in templates if t.count("{}") != 1 or len(t) > MAX_TEMPLATE_CHARS or
           re.search(r"\{[^}]", t.replace("{}", ""))]
    if bad:
        raise ValueError(f"{path}: each template needs exactly one {{}} (and no other braces): {bad[0]!r}")
    return templates


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file (`classify fit --classes`): one a line, blank lines and `#` lines
    skipped; two or more, none twice. A ValueError says what is wrong."""
    names = _read_lines(path, "class names", MAX_CLASS_NAMES_BYTES, f"{MAX_CLASS_NAMES_BYTES >> 20} MB")
    if len(names) < 2:
        raise ValueError(f"{path}: {len(names)} class name(s); a classifier needs at least two (one a line)")
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise ValueError(f"{path}: class name(s) listed twice: {', '.join(twice[:5])}")
    return names


def class_vectors(encode_text, classes: list[str], templates: tuple[str, ...] | None = None) -> np.ndarray:
    """(C, D) L2-normalised class text vectors: the mean of each class's prompt embeddings.
    `encode_text(list[str]) -> (N, D)` (a loaded model's); `templates` None: the default lists."""
    rows = []
    for name in classes:
        chosen = templates or default_templates(name)
        prompts = [t.format(prompt_name(name)) for t in chosen]
        rows.append(encode_text(prompts).mean(axis=0))
    emb = np.stack(rows).astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
