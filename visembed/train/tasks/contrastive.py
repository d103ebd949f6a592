"""The contrastive task: images and their captions pulled together in one space (CLIP or SigLIP),
optionally each image also against every training caption (the caption bank), with a CJK student
distilled from a frozen English text tower before training.

A micro-batch carries, besides "pixels", "tokens" (the dual encoder's `text_tokens` of the
captions, made in the loader) and "captions" (the strings: the caption bank finds its rows by text).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from visembed.config import RunConfig
from visembed.data import DataError
from visembed.losses import ContrastiveLoss
from visembed.models import bpe_vocab_size, build_model, needs_bpe_tokenizer
from visembed.train.batch import Autocast, MicroBatch, Needs
from visembed.train.caption_bank import build_caption_bank
from visembed.train.step import contrastive_backward

EVAL_LIMIT = 1000  # images per periodic evaluation: a trend, not the final benchmark
TOKENIZER_TEXTS = 200_000  # captions read to learn the BPE vocabulary


class ContrastiveTask:
    needs = Needs(sample="caption", views=1)

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        self.cfg, self.main = cfg, rank == 0
        tc = cfg.train
        self.loss_fn = ContrastiveLoss(cfg.model.loss, rank=rank, world_size=world, bank_weight=tc.contrastive.caption_bank_weight)
        self.bank = None
        self.find_unused_parameters = cfg.model.text.kind == "hf"  # a CJK student idles on all-English batches
        self.text_tokens = None  # the model's tokenizer, once it is built

    def prepare_assets(self, dataset, out_dir: Path) -> None:
        """A BPE vocabulary learnt on the training captions, where the text tower (or its CJK
        student) reads one; every language's captions when training on "both" or for a student."""
        m = self.cfg.model
        if needs_bpe_tokenizer(m):
            from visembed.models.bpe_tokenizer import train_bpe_tokenizer

            every_language = self.cfg.data.language == "both" or m.text.cjk_student.enabled
            texts = _caption_texts(dataset, every_language)
            if m.text.cjk_student.enabled and m.text.cjk_student.dictionary_pairs:  # its words too
                texts = itertools.chain(texts, (word for pair in self._dictionary() for word in pair))
            train_bpe_tokenizer(texts, bpe_vocab_size(m), out_dir)

    def build_model(self, cfg: RunConfig, assets: Path, pretrained: bool) -> nn.Module:
        model = build_model(cfg.model, tokenizer_dir=assets, pretrained=pretrained)
        self.text_tokens = model.text_tokens
        return model

    def configure(self, model: nn.Module) -> None:
        pass  # the towers decide (locked groups, a frozen text tower)

    def finalize(self, model: nn.Module) -> None:
        pass  # the model is saved as it trained

    def fields(self, samples: list) -> dict:
        captions = [sample.caption for sample in samples]
        return {"tokens": self.text_tokens(captions), "captions": captions}

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None:
        tc, student = self.cfg.train, self.cfg.model.text.cjk_student
        if model.vision.feature_cache is not None:
            warm_feature_cache(model, dataset, self.cfg.model.vision.image_size, progress=progress, main=self.main)
        if tc.contrastive.caption_bank_weight > 0:  # the frozen tower's features of every training caption, once
            self.bank = build_caption_bank(model, dataset, progress=progress)
            if self.main:
                print(f"caption bank: {len(self.bank):,} distinct training captions")
        if fresh and student.enabled and student.distill_steps > 0:
            from visembed.train.distill import distill_student, translation_pairs

            with torch.random.fork_rng(devices=[]):  # every rank distils identically; the main RNG stays as seeded
                loss = distill_student(model.text, translation_pairs(dataset), steps=student.distill_steps,
                                       seed=tc.seed, progress=progress, dictionary=self._dictionary())
            if self.main:
                print(f"CJK student distilled from the frozen text tower (1 - cos = {loss:.3f})")

    def _dictionary(self) -> list[tuple[str, str]]:
        """The CC-CEDICT pairs the CJK student learns beside the data's names (none unless asked)."""
        limit = self.cfg.model.text.cjk_student.dictionary_pairs
        if not limit:
            return []
        from visembed.data.dictionary import cedict_pairs

        return cedict_pairs(limit, seed=self.cfg.train.seed)

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
    step (`feature_warmup.warm_cache`): the steps then never run it."""
    from visembed.train.feature_warmup import warm_cache

    was_training = model.vision.training
    model.vision.eval()  # the trainable groups run too here: their BatchNorm statistics must not move
    warm_cache(model.vision.feature_cache, locked_fingerprint(model.vision), dataset, image_size,
               lambda pixels: model.vision(model.normalize_pixels(pixels)), device=next(model.parameters()).device,
               progress=progress, main=main)
    model.vision.train(was_training)


def locked_fingerprint(tower: nn.Module) -> str:
    """What cached features depend on besides the pixels: the tower's kind, how much of it is
    locked, and the locked groups' weights and statistics."""
    from visembed.train.feature_warmup import weights_digest

    locked = tower.locked_groups()
    return weights_digest(f"{type(tower).__name__}/{len(locked)}", locked)


def _caption_texts(dataset, every_language: bool):
    for i, sample in enumerate(dataset):
        if i >= TOKENIZER_TEXTS:
            break
        if every_language and sample.captions:
            yield from sample.captions.values()
        else:
            yield sample.caption
