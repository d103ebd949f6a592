"""How well the demo's CJK student reads Chinese names it was never taught (text only, no images).

The student (a small BPE transformer) is distilled from the frozen MiniLM tower so that
student(Chinese name) lands on teacher(English name). It learns on the training concepts' names
(~3,400 pairs) and, with `dictionary_pairs`, on CC-CEDICT words as well (half of each batch).
Measured here on the held-out concepts (val + test, 575 names never distilled on): each Chinese
name's student feature against the teacher features of all 575 English names, Recall@1/5 of its own
translation. The reference row is the demo's previous recipe (names only, 1,000 steps).

    python benchmarks/cjk_student.py                     # the four rows below (~12 min on 2 cores)
    python benchmarks/cjk_student.py --rows names-1000 names+dict-3000
    python benchmarks/cjk_student.py --rows names+dict-1000 --without-held-out   # the leakage check
    python benchmarks/cjk_student.py --smoke      # one row, 5 steps, 32 concepts a split: does it run (CI)

`--without-held-out` takes every held-out name (Chinese) and its English out of the dictionary
sample first: some held-out names are dictionary headwords (墨镜 sunglasses), and the gain should
not come from those.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

try:  # imported from the repository root (python -m benchmarks.cjk_student)
    from benchmarks.markdown_table import print_table
except ImportError:  # run as a script: this folder is on sys.path
    from markdown_table import print_table

ROWS = {  # name -> (distillation steps, dictionary pairs)
    "names-1000": (1000, 0),  # the previous demo recipe (the reference)
    "names-3000": (3000, 0),
    "names+dict-1000": (1000, 20000),
    "names+dict-3000": (3000, 20000),  # the demo now
}


def measure(steps: int, dictionary_pairs: int, seed: int = 0, without_held_out: bool = False,
            data: str = "builtin:emoji") -> dict:
    from visembed.config import apply_overrides, load_preset
    from visembed.data import open_dataset
    from visembed.data.dictionary import cedict_pairs
    from visembed.models import build_model
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer
    from visembed.train.distill import distill_student, translation_pairs

    names = translation_pairs(open_dataset(data, "train"))
    held = translation_pairs(open_dataset(data, "val")) + translation_pairs(open_dataset(data, "test"))
    words = cedict_pairs(dictionary_pairs, seed=seed) if dictionary_pairs else []
    if without_held_out:
        held_zh, held_en = {zh for zh, _ in held}, {en.lower() for _, en in held}
        words = [(zh, en) for zh, en in words if zh not in held_zh and en.lower() not in held_en]
    cfg = apply_overrides(load_preset("demo"), [f"model.text.cjk_student.distill_steps={steps}",
                                                f"model.text.cjk_student.dictionary_pairs={dictionary_pairs}"])
    with tempfile.TemporaryDirectory() as folder:  # the student's vocabulary, learnt as the demo learns it
        train_bpe_tokenizer([t for pair in names + words for t in pair], cfg.model.text.cjk_student.vocab_size,
                            f"{folder}/tokenizer.json")
        torch.manual_seed(seed)
        text = build_model(cfg.model, folder).train().text
    start = time.perf_counter()
    loss = distill_student(text, names, steps=steps, seed=seed, dictionary=words)
    seconds = time.perf_counter() - start
    text.eval()
    with torch.no_grad():
        # every Chinese name through the student, even one without CJK characters ("DNA"), which
        # text.encode would route to the teacher; English names have none, so encode is the teacher
        student = F.normalize(text.student_proj(text.student.encode([zh for zh, _ in held])), dim=-1)
        teacher = text.encode([en for _, en in held])
    ranks = (student @ teacher.T).argsort(dim=1, descending=True)
    own = torch.arange(len(held))[:, None]
    return {"held-out names": len(held), "dictionary pairs used": len(words), "R@1": float((ranks[:, :1] == own).any(1).float().mean()),
            "R@5": float((ranks[:, :5] == own).any(1).float().mean()), "final loss (1 - cos)": loss,
            "distil s (teacher features included)": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--without-held-out", action="store_true", help="leave held-out names out of the dictionary")
    parser.add_argument("--smoke", action="store_true", help="one row, 5 steps, 200 dictionary pairs, 32 concepts "
                                                             "per split: does it run")
    args = parser.parse_args()
    rows = {"smoke": (5, 200)} if args.smoke else {name: ROWS[name] for name in args.rows}
    data = "builtin:emoji?limit=32" if args.smoke else "builtin:emoji"
    results = []
    for name, (steps, pairs) in rows.items():
        result = {"recipe": name, "steps": steps, "dictionary pairs": pairs, **measure(steps, pairs, args.seed, args.without_held_out, data)}
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
        results.append(result)
    print_table(results, list(results[0]))


if __name__ == "__main__":
    main()
