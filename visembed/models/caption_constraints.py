"""Decoding rules for a captioner's answers: copy a hinted name verbatim, and write in one script.

A 4 M-parameter LM trained from scratch knows the sentence ("The ... emoji, from ...") better than the
names: left alone it starts a hinted name and drifts ("prayer beads" -> "prayer bell"), or invents
one ("sry"). And a Chinese answer may slide into an English sentence it learnt from the detail
requests. Both are rules on the next token, applied by one `LogitsProcessor` during beam search:

  * copying: while the answer's last tokens are the start of a hinted name (as tokenised, with and
    without a leading space), the name's next token gets `copy_bonus` added to its log-probability;
    the first token of a hinted name gets `start_bonus` (pointer-generator's copy, as a bias);
  * one script: a Chinese answer never takes a token with a Latin letter, an English answer never
    one with a CJK character (or a piece of one), except the tokens of a hinted name being copied
    ("OK手势" stays possible).

After beam search, slot filling (`with_names_swapped`, on by default) puts each hinted name in the
name slot of the sentence the beams share, and `contains_hint` is the re-ranking side: which
candidates name one of the hints verbatim.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import torch
from transformers import LogitsProcessor

_LATIN = re.compile(r"[A-Za-z]")
_CJK_OR_PIECE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufffd]")


@functools.lru_cache(maxsize=8)
def _script_masks(tokenizer, size: int) -> dict[str, torch.Tensor]:
    """{language: (V,) bool, True where the token is of the other script}: Latin for "zh", CJK for "en"."""
    texts = [tokenizer.decode([i]) for i in range(size)]
    special = set(tokenizer.all_special_ids)
    latin = torch.tensor([bool(_LATIN.search(t)) and i not in special for i, t in enumerate(texts)])
    cjk = torch.tensor([bool(_CJK_OR_PIECE.search(t)) and i not in special for i, t in enumerate(texts)])
    return {"zh": latin, "en": cjk}


def name_pieces(tokenizer, names: list[str]) -> list[tuple[int, ...]]:
    """Each name's token ids as it may appear in an answer: after a space, and right after punctuation."""
    out: dict[tuple[int, ...], None] = {}
    for name in names:
        for text in (" " + name, name):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids:
                out[ids] = None
    return list(out)


class CopyAndScript(LogitsProcessor):
    """Per prompt: its `language` ("en", "zh" or None: no script rule) and its hinted `names`;
    `beams` rows of the score matrix belong to each prompt."""

    def __init__(self, tokenizer, languages: list[str | None], names: list[list[str]], beams: int,
                 copy_bonus: float, start_bonus: float):
        self.pieces = [name_pieces(tokenizer, group) for group in names]
        self.languages, self.beams = languages, beams
        self.copy_bonus, self.start_bonus = copy_bonus, start_bonus
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, size = scores.shape
        masks = _script_masks(self.tokenizer, size)
        bonus = torch.zeros_like(scores)
        allowed = torch.zeros(rows, size, dtype=torch.bool, device=scores.device)  # name tokens: exempt
        for row in range(rows):
            prompt = row // self.beams
            tail = input_ids[row, -8:].tolist()
            for piece in self.pieces[prompt]:
                allowed[row, piece[0]] = True
                bonus[row, piece[0]] = max(float(bonus[row, piece[0]]), self.start_bonus)
                for j in range(min(len(piece) - 1, len(tail)), 0, -1):
                    if tail[-j:] == list(piece[:j]):  # inside this name: its next token
                        allowed[row, piece[j]] = True
                        bonus[row, piece[j]] = max(float(bonus[row, piece[j]]), self.copy_bonus)
                        break
        scores = scores + bonus
        for row in range(rows):
            language = self.languages[row // self.beams]
            if language in masks:
                banned = masks[language].to(scores.device) & ~allowed[row]
                scores[row, banned] = float("-inf")
        return scores


def occurs(name: str, text: str) -> bool:
    """Whether `name` is written in `text`: as whole words where it has Latin letters ("cat" is not in
    "catholic"), anywhere for a Chinese name (no spaces between words)."""
    if not name:
        return False
    if not _LATIN.search(name):
        return name in text
    return re.search(r"(?<![A-Za-z])" + re.escape(name) + r"(?![A-Za-z])", text) is not None


def contains_hint(text: str, names: list[str]) -> bool:
    """Whether `text` names one of `names` verbatim (case aside)."""
    return any(occurs(name.lower(), text.lower()) for name in names)


@dataclasses.dataclass(frozen=True)
class Naming:
    """How a captioner names what it sees; the defaults were chosen on the validation split
    (docs/captions.md): slot filling (the LM writes the sentence, each hinted name is put in its
    name slot, the dual encoder chooses, a text naming the likeliest hint scoring 0.1 more) took the
    demo captioner's English name rate on validation from 0.152 to 0.381 and the Chinese one from
    0.022 to 0.204; the copy bias and the start bonus did not help (its LM never saw the right name
    among its hints in training), so they are off."""

    rules: bool = True  # the decoding rules above, slot filling and the bonus (False: the LM alone, as before)
    copy_bonus: float = 0.0  # added to a started hinted name's next token's log-probability
    start_bonus: float = 0.0  # added to a hinted name's first token's
    name_bonus: float = 0.1  # added to the cosine of a candidate that names the first (likeliest) hint verbatim
    hints: int | None = None  # names shown in the prompt (None: the model's model.captioner.hints)
    seen_margin: float = 0.15  # taken off a training caption's cosine when hints are chosen (calibrated stacking)
    swap_names: bool = True  # add candidates whose name slot holds each hint (`with_names_swapped`)


def with_names_swapped(candidates: list[tuple[str, float]], hints: list[str], known: set[str],
                       ) -> list[tuple[str, float]]:
    """Slot filling: the candidates, then the LM's sentence with each hinted name in its name slot:
    [(text, confidence)]. Beams of one image share a sentence and disagree on the name the LM is
    unsure of ("The So emoji, from Flags." / "The Si emoji, from Flags."), so a candidate's slot is
    the longest known name (`known`: the training captions and the hints) it holds, else where it
    differs from another candidate (`differing_span`). The sentence around a slot (a frame) that
    most candidates share takes each hint (the LM's likeliest first among equals): not a malformed
    beam of its own ("The San emoji, fromflag."), nor a frame around another part of the sentence
    two beams disagree on (the group of "一个“旗帜”表情符号，属于旗帜类。"). The LM supplies the
    sentence, the hints the name, the dual encoder chooses."""
    out: dict[str, float] = dict((text, confidence) for text, confidence in reversed(candidates))
    out = {text: out[text] for text, _ in candidates}  # each text once, in the LM's order
    texts = list(out)
    frames: dict[tuple[str, str], list[float]] = {}  # (before the slot, after it) -> the candidates' confidences
    for text in texts:
        slot = max((name for name in known if name in text and occurs(name, text)), key=len, default=None)
        span = differing_span(text, texts) if slot is None else (text.index(slot), text.index(slot) + len(slot))
        if span is not None:
            frames.setdefault((text[: span[0]], text[span[1] :]), []).append(out[text])
    if not frames:
        return list(out.items())
    before, after = max(frames, key=lambda frame: len(frames[frame]))  # the commonest; the LM's first among equals
    for hint in hints:
        out.setdefault(before + hint + after, max(frames[before, after]))
    return list(out.items())


_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNITS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+|\\s+")
_CLAUSE_END = re.compile(r"[,.;:!?，。；：！？“”\"]")


def differing_span(text: str, others: list[str]) -> tuple[int, int] | None:
    """(start, end) of the longest run of `text`'s words that differs from another of `others` with
    the same words around it, where that run holds no punctuation (so it is a name, not a clause); a
    Chinese run is widened to the whole run of Chinese characters it sits in ("圣克" against "圣斯":
    both characters, not "克"). None when no other text has that shape."""
    units = _UNITS.findall(text)
    best = None
    for other in others:
        theirs = _UNITS.findall(other)
        if theirs == units:
            continue
        head = 0
        while head < min(len(units), len(theirs)) and units[head] == theirs[head]:
            head += 1
        tail = 0
        while tail < min(len(units), len(theirs)) - head and units[-1 - tail] == theirs[-1 - tail]:
            tail += 1
        end = len(units) - tail
        if not "".join(units[head:end]).strip() or not "".join(theirs[head : len(theirs) - tail]).strip():
            continue  # one text only adds words to the other: no slot to fill
        while head > 0 and _is_cjk(units[head - 1]) and _is_cjk(units[head]):
            head -= 1
        while end < len(units) and _is_cjk(units[end]) and _is_cjk(units[end - 1]):
            end += 1
        if _CLAUSE_END.search("".join(units[head:end])):
            continue
        start = sum(len(u) for u in units[:head])
        span = (start, start + sum(len(u) for u in units[head:end]))
        if best is None or span[1] - span[0] > best[1] - best[0]:
            best = span
    return best


def _is_cjk(unit: str) -> bool:
    return len(unit) == 1 and re.match(f"[{_CJK}]", unit) is not None
