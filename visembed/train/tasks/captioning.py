"""The captioning tasks: a causal LM learns to continue conversations about an image whose features
(from a frozen dual encoder) are spliced into its input as prefix tokens.

    caption_align     stage 1: the projector learns (and the LM too when it starts from scratch:
                      there is nothing to align to yet); single-exchange conversations only
    caption_instruct  stage 2: projector and LM learn (or, with model.captioner.lora_rank, LoRA
                      adapters on the frozen LM, merged into it at the end); every conversation,
                      multi-turn included

Each sample brings its candidate conversations (`visembed.data.conversations.conversations_of`),
tokenised in the loader (`fields`); each step draws one per sample with the step's seeded RNG, so a
resumed run draws the same ones. The loss is the assistant's tokens only; a conversation left with
nothing to learn after truncation is an error naming the sample (when it is drawn), never a silent
zero. With `model.captioner.hints`, each prompt names the training captions closest to its image,
the image's own left out (a training image is then asked about as a new concept would be): those
are found with the frozen encoder's features of the image, so a captioner that shows hints
tokenises the drawn conversation in the step, once its hints are known.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visembed.config import RunConfig
from visembed.data import DataError
from visembed.train.batch import Autocast, MicroBatch, Needs

EVAL_LIMIT = 100  # images per periodic evaluation (generation is slow on a CPU)
CHUNKS = 4  # forward/backward passes per micro-batch, rows grouped by length
TOKENIZER_SAMPLES = 50_000  # samples whose conversations teach the "gpt2" LM's tokenizer
HINT_BANK_LIMIT = 50_000  # distinct captions per language the hints are drawn from


@dataclass
class Candidates:
    """One sample's candidate conversations (the step draws one of them)."""

    id: str
    conversations: list[list[dict]]
    own: dict[str, str]  # the sample's own captions by language: among its hints at `own_hint_rate` only
    rows: list | None = None  # each conversation tokenised (or the DataError it raises); None: left to the step


class CaptioningTask:
    needs = Needs(sample="caption", views=1)
    find_unused_parameters = False

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        self.cfg, self.main = cfg, rank == 0
        self.instruct = cfg.train.task == "caption_instruct"
        self.lora = self.instruct and cfg.model.captioner.lora_rank > 0
        self.tokenizer, self.shows_hints = None, False  # the LM's tokenizer and the model's hints, once built

    def prepare_assets(self, dataset, out_dir: Path) -> None:
        """The dual encoder's assets (from its folder), the LM's tokenizer and the hint bank."""
        from visembed.checkpoint import read_config
        from visembed.data.conversations import conversations_of, with_hints
        from visembed.models import build_model
        from visembed.models.lm import prepare_lm_assets

        source = Path(self.cfg.model.captioner.vision)
        build_model(read_config(source).model, tokenizer_dir=source, pretrained=False).save_assets(out_dir)
        if self.cfg.model.captioner.hints:
            self._save_hint_bank(dataset, out_dir)

        def texts():
            for i, sample in enumerate(dataset):
                if i >= TOKENIZER_SAMPLES:
                    return
                for turns in conversations_of(sample):
                    yield from (turn["content"] for turn in with_hints(turns, ["a", "b"]))
            yield "USER: ASSISTANT:"

        prepare_lm_assets(self.cfg.model.captioner, texts(), out_dir)

    def _save_hint_bank(self, dataset, out_dir: Path) -> None:
        from visembed.data.conversations import hint_texts_of
        from visembed.models.captioner import save_hint_bank

        bank: dict[str, dict[str, None]] = {}  # language -> distinct captions, in data order
        for sample in dataset:
            for language, text in hint_texts_of(sample).items():
                texts = bank.setdefault(language, {})
                if len(texts) < HINT_BANK_LIMIT:
                    texts[text] = None
        save_hint_bank({language: list(texts) for language, texts in bank.items()}, out_dir)

    def build_model(self, cfg: RunConfig, assets: Path, pretrained: bool) -> nn.Module:
        from visembed.models import build_model

        model = build_model(cfg.model, tokenizer_dir=assets, pretrained=pretrained)
        self.tokenizer, self.shows_hints = model.tokenizer, model.hints > 0
        return model

    def configure(self, model: nn.Module) -> None:
        """The projectors always learn; the LM in stage 2, or from the start when it is new (and
        MiniLM's LM head, which the sentence encoder never had). With model.captioner.lora_rank,
        stage 2 freezes the LM and trains LoRA adapters on it instead (before a resumed
        checkpoint loads: it holds them)."""
        c = self.cfg.model.captioner
        if self.lora:
            from visembed.models.lora import add_adapters

            add_adapters(model.lm, c)
            return
        model.lm.requires_grad_(self.instruct or c.lm == "gpt2")
        if c.lm == "minilm":
            model.lm.cls.requires_grad_(True)

    def finalize(self, model: nn.Module) -> None:
        """LoRA adapters merged into the LM's weights: the final folder is a plain captioner."""
        if self.lora:
            from visembed.models.lora import merge_adapters

            merge_adapters(model.lm)

    def candidates(self, sample) -> Candidates:
        """The conversations a sample may be trained on in this stage (untokenised)."""
        from visembed.data.conversations import conversations_of, hint_texts_of

        conversations = conversations_of(sample)
        if not self.instruct:
            conversations = [c for c in conversations if len(c) == 2] or conversations
        return Candidates(sample.id, conversations, hint_texts_of(sample))

    def fields(self, samples: list) -> dict:
        """{"candidates": [Candidates]}, each conversation tokenised here unless the model shows
        hints (which depend on the image's features: see the module's docstring)."""
        out = [self.candidates(sample) for sample in samples]
        if not self.shows_hints:
            for c in out:
                c.rows = [_row_or_error(self.tokenizer, c.id, turns, [], self.cfg.model.captioner.max_tokens)
                          for turns in c.conversations]
        return {"candidates": out}

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None:
        if model.feature_cache is not None and not getattr(dataset, "streaming", False):
            self._warm(model, dataset, progress)

    def _warm(self, model, dataset, progress: bool) -> None:
        """Each training image through the frozen encoder once, before the first step, reusing what an
        earlier run with the same encoder saved (both stages, reruns)."""
        from visembed.train.feature_warmup import warm_cache, weights_digest

        encoder = model.encoder  # its image tower and its projection into the shared space
        name = "captioner-" + weights_digest(type(encoder.vision).__name__, (encoder.vision, encoder.visual_projection))
        warm_cache(model.feature_cache, name, dataset, self.cfg.model.vision.image_size, model.visual_prefix,
                   device=next(model.parameters()).device, progress=progress, main=self.main)

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]:
        from visembed.data.conversations import conversation_language
        from visembed.models.captioner import learnt_tokens

        plain = getattr(model, "module", model)
        limit = self.cfg.model.captioner.max_tokens
        total, batches = 0.0, []
        for micro in micro_batches:
            pixels, candidates = micro["pixels"], micro["candidates"]
            chosen = []  # one conversation per sample, drawn from the step's seeded RNG
            for c in candidates:
                if not c.conversations:
                    raise DataError(f"sample {c.id!r} has no caption or conversation to learn from")
                chosen.append(int(torch.randint(len(c.conversations), ())))
            features = plain.features(pixels)
            if any(c.rows is None for c in candidates):  # tokenised here, with the hints of each image
                turns = [c.conversations[k] for c, k in zip(candidates, chosen)]
                languages = [conversation_language(t) for t in turns]
                hints = plain.hints_for(features, languages, exclude=[set(c.own.values()) for c in candidates])
                rate = self.cfg.model.captioner.own_hint_rate
                if rate > 0:  # (no draw at 0: runs without it keep their random stream)
                    hints = [with_own_hint(texts, c.own.get(language), rate) for texts, c, language
                             in zip(hints, candidates, languages)]
                rows = [_row(plain.tokenizer, c.id, t, texts, limit) for c, t, texts in zip(candidates, turns, hints)]
            else:
                rows = [_drawn(c.rows[k]) for c, k in zip(candidates, chosen)]
            batches.append((pixels, features, rows))
        # the mean over every learnt token of the step; rows of similar length run together (padding
        # to the longest of the whole batch would double the work), which leaves the gradient as is
        tokens = sum(learnt_tokens(rows) for _, _, rows in batches)
        chunks = [(pixels, features, rows, part) for pixels, features, rows in batches for part in _by_length(rows)]
        for j, (pixels, features, rows, part) in enumerate(chunks):
            sync = j == len(chunks) - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                loss = model(pixels[part], [rows[i] for i in part], features=features[part]) / tokens
            loss.backward()
            total += loss.item()
        return {"loss": total}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Caption scores on (up to EVAL_LIMIT) validation images, after stage 2 (the projector alone
        does not speak yet); no validation data is not fatal."""
        if not self.instruct:
            return {}
        from visembed.eval.captioning import evaluate_captioner
        from visembed.models.inference import CaptionerModel

        cfg = self.cfg
        was_training = model.training
        model.eval()
        try:
            result = evaluate_captioner(CaptionerModel(model, cfg), cfg.data.val or cfg.data.train, "val",
                                        limit=EVAL_LIMIT, baseline=False, progress=False)
        except (DataError, ValueError, FileNotFoundError) as err:
            print(f"evaluation skipped: {err}")
            return {}
        finally:
            model.train(was_training)
        return {f"val_{k}": v for k, v in result.items() if isinstance(v, float)}


def with_own_hint(hints: list[str], own: str | None, rate: float) -> list[str]:
    """`hints` with the image's `own` caption put in at a random place (replacing the last hint) with
    probability `rate`, drawn from the step's seeded RNG (so resumes are exact)."""
    if not hints or own is None or float(torch.rand(())) >= rate:
        return hints
    place = int(torch.randint(len(hints), ()))
    return [*hints[:place], own, *hints[place:]][: len(hints)]


def _row(tokenizer, sample_id: str, turns: list[dict], hints: list[str], limit: int):
    """The conversation's ids and labels (with as many `hints` as fit), or a DataError naming the
    sample when it cannot be learnt from."""
    from visembed.models.chat_format import ConversationError, encode_with_hints

    try:
        row = encode_with_hints(tokenizer, turns, hints, limit)
    except ConversationError as err:
        raise DataError(f"sample {sample_id!r}: {err}") from None
    if all(label < 0 for label in row.labels):
        raise DataError(f"sample {sample_id!r}: every answer token falls beyond model.captioner.max_tokens "
                        f"({limit}): nothing to learn; shorten its first turn or raise the limit")
    return row


def _row_or_error(tokenizer, sample_id: str, turns: list[dict], hints: list[str], limit: int):
    """`_row`, its DataError kept for the step to raise should it draw this conversation."""
    try:
        return _row(tokenizer, sample_id, turns, hints, limit)
    except DataError as err:
        return err


def _drawn(row):
    if isinstance(row, DataError):
        raise row
    return row


def _by_length(rows, parts: int = CHUNKS) -> list[list[int]]:
    """Row indices in up to `parts` groups of similar length (shortest first)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    size = -(-len(order) // parts)
    return [order[i : i + size] for i in range(0, len(order), size)]
