"""Teach the CJK student of a frozen English text tower by distillation (Reimers & Gurevych 2020,
"Making monolingual sentence embeddings multilingual"): on pairs of names in two languages, the
student's feature of the Chinese name is pulled onto the frozen teacher's feature of the English
name. Chinese queries then land where their English translations do, and inherit what the image
tower learns against English captions, without spending image-training time on a second language.

`dictionary` pairs (CC-CEDICT words, `visembed.data.dictionary`) teach the words and characters
the captions lack: then half of every batch comes from them and half from the data's own pairs, so
the names the student is asked about most keep their weight however large the dictionary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visembed.train.schedule import lr_at


def translation_pairs(dataset, source: str = "zh", target: str = "en") -> list[tuple[str, str]]:
    """Distinct (source-language, target-language) caption pairs of a dataset's samples."""
    pairs = {}
    for sample in dataset:
        captions = sample.captions or {}
        if captions.get(source) and captions.get(target):
            pairs.setdefault(captions[source], captions[target])
    return sorted(pairs.items())


def distill_student(text_tower, pairs: list[tuple[str, str]], *, steps: int, batch_size: int = 128,
                    lr: float = 1e-3, seed: int = 0, progress: bool = False,
                    dictionary: list[tuple[str, str]] = ()) -> float:
    """Train `text_tower.student` (+ its projection) so student(source) ~ teacher(target); returns the
    last loss (1 - cosine). Deterministic for a seed; the teacher stays frozen. With `dictionary`
    pairs, each batch is half `pairs`, half `dictionary`."""
    if not pairs:
        raise ValueError("no translation pairs to distil the CJK student from")
    params = list(text_tower.student.parameters()) + list(text_tower.student_proj.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    everything = list(pairs) + list(dictionary)
    sources = [s for s, _ in everything]
    from tqdm import tqdm

    with torch.no_grad():  # (P, width), L2-normalised; distinct targets encoded once
        distinct = list(dict.fromkeys(t for _, t in everything))
        row = {t: i for i, t in enumerate(distinct)}
        encoded = torch.cat([text_tower._encode_teacher(distinct[i : i + 1024]).float()
                             for i in tqdm(range(0, len(distinct), 1024), desc="teacher features",
                                           disable=not progress or len(distinct) <= 4096)])
        targets = encoded[[row[t] for _, t in everything]]
    loss = torch.tensor(0.0)
    own = min(batch_size, len(pairs)) if not dictionary else max(1, batch_size // 2)

    for step in tqdm(range(steps), desc="distil CJK student", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, max(1, steps // 10), steps)
        index = torch.randint(len(pairs), (own,), generator=generator)  # (B,)
        if dictionary:  # the other half from the dictionary, which follows `pairs` in `everything`
            extra = torch.randint(len(dictionary), (batch_size - own,), generator=generator) + len(pairs)
            index = torch.cat([index, extra])
        student = text_tower.student_proj(text_tower.student.encode([sources[i] for i in index.tolist()]))  # (B, width)
        loss = 1 - F.cosine_similarity(student.float(), targets[index].to(student.device), dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
