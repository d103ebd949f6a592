"""Caption metrics: BLEU-4, ROUGE-L and CIDEr of generated captions against reference captions.

The scorers are pycocoevalcap's (`Bleu(4)`, `Rouge()`, `Cider()`: pure Python). Its PTBTokenizer
needs Java, so text is tokenised here instead: lower-cased, punctuation dropped, split on
whitespace; for Chinese every CJK character is one token (Chinese has no spaces: split on
whitespace, a whole clause would be one "word"), latin words and numbers stay whole.

Scores are corpus-level and depend on the evaluated set: BLEU pools n-gram counts over all
captions, and CIDEr takes its IDF weights from the references of the captions being scored, so a
CIDEr figure compares models only on the same set (a set of one scores 0; small sets are unstable).
pycocoevalcap's CIDEr is the COCO one (CIDEr-D's clipping and length penalty, times 10).
"""

from __future__ import annotations

import re
import unicodedata

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff])")
_NOT_WORD = re.compile(r"[^\w\s]|_")


def caption_tokens(text: str, language: str) -> list[str]:
    """The tokens a caption is scored on: "A red apple." -> ["a", "red", "apple"];
    zh: "一个红苹果 OK" -> ["一", "个", "红", "苹", "果", "ok"]."""
    text = unicodedata.normalize("NFKC", text).lower()  # full-width latin and digits -> ASCII
    if language.lower().startswith("zh"):
        text = _CJK.sub(r" \1 ", text)
    return _NOT_WORD.sub(" ", text).split()


def caption_scores(predictions: list[str], references: list[list[str]], language: str) -> dict[str, float]:
    """{"BLEU-4", "ROUGE-L", "CIDEr"} of predictions[i] against references[i] (one or more each)."""
    if not predictions:
        raise ValueError("caption_scores: no predictions to score")
    if len(predictions) != len(references):
        raise ValueError(f"caption_scores: {len(predictions)} predictions but {len(references)} reference lists")
    if any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("caption_scores: every prediction needs a non-empty list of reference strings")

    def joined(text: str) -> str:
        return " ".join(caption_tokens(text, language))

    # pycocoevalcap's layout: {key: [tokenised caption, ...]}, references ("gts") first
    gts = {i: [joined(ref) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [joined(pred)] for i, pred in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": float(bleu[3]), "ROUGE-L": float(rouge), "CIDEr": float(cider)}
