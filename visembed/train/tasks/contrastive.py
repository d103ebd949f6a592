"""The contrastive task: images and their captions pulled together in one space (CLIP or SigLIP),
optionally each image also against every training caption (the caption bank), with a CJK student
distilled from a frozen English text tower before training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import RunConfig
from visembed.data import DataError
from visembed.losses import ContrastiveLoss
from visembed.models import bpe_vocab_size, needs_bpe_tokenizer
from visembed.train.caption_bank import build_caption_bank
from visembed.train.step import contrastive_backward
from visembed.train.tasks import Autocast, MicroBatch

EVAL_LIMIT = 1000  # images per periodic evaluation: a trend, not the final benchmark
TOKENIZER_TEXTS = 200_000  # captions read to learn the BPE vocabulary


class ContrastiveTask:
    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        self.cfg, self.main = cfg, rank == 0
        tc = cfg.train
        self.loss_fn = ContrastiveLoss(cfg.model.loss, rank=rank, world_size=world, bank_weight=tc.caption_bank_weight)
        self.bank = None
        self.find_unused_parameters = cfg.model.text.kind == "hf"  # a CJK student idles on all-English batches

    def prepare_assets(self, dataset, out_dir: Path) -> None:
        """A BPE vocabulary learnt on the training captions, where the text tower (or its CJK
        student) reads one; every language's captions when training on "both" or for a student."""
        m = self.cfg.model
        if needs_bpe_tokenizer(m):
            from visembed.models.bpe_tokenizer import train_bpe_tokenizer

            every_language = self.cfg.data.language == "both" or m.text.cjk_student.enabled
            train_bpe_tokenizer(_caption_texts(dataset, every_language), bpe_vocab_size(m), out_dir)

    def configure(self, model: nn.Module) -> None:
        pass  # the towers decide (locked groups, a frozen text tower)

    def target(self, sample) -> str:
        return sample.caption

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None:
        tc, student = self.cfg.train, self.cfg.model.text.cjk_student
        if getattr(model.vision, "feature_cache", None) is not None:
            warm_feature_cache(model, dataset, self.cfg.model.vision.image_size, progress=progress, main=self.main)
        if tc.caption_bank_weight > 0:  # the frozen tower's features of every training caption, once
            self.bank = build_caption_bank(model, dataset, progress=progress)
            if self.main:
                print(f"caption bank: {len(self.bank):,} distinct training captions")
        if fresh and student.enabled and student.distill_steps > 0:
            from visembed.train.distill import distill_student, translation_pairs

            with torch.random.fork_rng(devices=[]):  # every rank distils identically; the main RNG stays as seeded
                loss = distill_student(model.text, translation_pairs(dataset), steps=student.distill_steps,
                                       seed=tc.seed, progress=progress)
            if self.main:
                print(f"CJK student distilled from the frozen text tower (1 - cos = {loss:.3f})")

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]:
        return contrastive_backward(model, self.loss_fn, micro_batches, autocast, self.bank)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Retrieval (and zero-shot) metrics on the validation data; missing validation data is
        reported, never fatal."""
        from visembed.eval.run import evaluate
        from visembed.models.inference import Model

        cfg = self.cfg
        was_training = model.training
        model.eval()
        try:
            result = evaluate(Model(model, cfg), cfg.data.val or cfg.data.train, "val", language=cfg.data.language,
                              limit=EVAL_LIMIT, progress=False)
        except (DataError, ValueError, FileNotFoundError) as err:  # no (usable) validation data
            print(f"evaluation skipped: {err}")
            return {}
        finally:
            model.train(was_training)
        return {f"val_{k}": v for k, v in result.items() if isinstance(v, float)}


def warm_feature_cache(model: nn.Module, dataset, image_size: int, *, progress: bool, main: bool) -> None:
    """Pass every training image through the locked part of the image tower once, before the first
    step, reusing what an earlier run on the same images saved (`$VISEMBED_CACHE/features/`): the
    steps then never run it. The pixels go the way the loader sends them (`to_tensor`, / 255, no
    augmentation), so each step finds its images by content."""
    import time

    from tqdm import tqdm

    from visembed.data import SkipCounter, decoded_batches, to_tensor
    from visembed.paths import cache_root

    if getattr(dataset, "streaming", False):
        return  # no known end to warm up to: the cache fills as the steps go
    cache = model.vision.feature_cache
    path = cache_root() / "features" / f"{locked_fingerprint(model.vision)}.safetensors"
    started, loaded = time.perf_counter(), cache.load(path)
    before = cache.misses
    device = next(model.parameters()).device
    was_training = model.vision.training
    model.vision.eval()  # the trainable groups run too here: their BatchNorm statistics must not move
    with torch.no_grad(), tqdm(total=len(dataset), desc="image features", unit="img", disable=not progress,
                                dynamic_ncols=True) as bar:
        for batch in decoded_batches(dataset, SkipCounter(), 64):
            pixels = torch.stack([to_tensor(image, image_size) for _, image in batch]).to(device).float() / 255
            model.vision(model.normalize_pixels(pixels))
            bar.update(len(batch))
    model.vision.train(was_training)
    computed = cache.misses - before
    if main:
        if computed:
            cache.save(path)
        print(f"image features: {len(cache):,} cached ({loaded:,} read from {path}, {computed:,} computed) "
              f"in {time.perf_counter() - started:.0f} s")


def locked_fingerprint(tower: nn.Module) -> str:
    """What cached features depend on besides the pixels: the tower's kind, how much of it is
    locked, and the locked groups' weights and statistics."""
    import hashlib

    locked = tower.locked_groups()
    digest = hashlib.sha256(f"{type(tower).__name__}/{len(locked)}".encode())
    for group in locked:
        for name, tensor in group.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _caption_texts(dataset, every_language: bool):
    for i, sample in enumerate(dataset):
        if i >= TOKENIZER_TEXTS:
            break
        if every_language and sample.captions:
            yield from sample.captions.values()
        else:
            yield sample.caption
