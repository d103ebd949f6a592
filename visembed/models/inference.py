"""Inference on a dual encoder: images and texts in, float32 numpy vectors (L2-normalised) out."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visembed.config import trains_text_tower


class TextTowerUntrained(ValueError):
    """Text asked of a model whose last training taught its text tower nothing (an image-only task
    such as `simclr`): its text vectors would be noise, so no text query is answered."""


class Model:
    """A trained dual encoder in eval mode. Outputs are float32 numpy arrays, L2-normalised."""

    def __init__(self, module: torch.nn.Module, config, device: str | torch.device | None = None):
        """Wrap a DualEncoder (e.g. the one being trained, for periodic eval); see `load`."""
        self.module, self.config = module, config
        self.device = torch.device(device) if device is not None else next(module.parameters()).device

    @classmethod
    def from_folder(cls, folder, device: str | torch.device | None = None) -> "Model":
        """Load a run or model folder written by `visembed train`, on the best device unless told."""
        from visembed.distributed import best_device
        from visembed.models import load_model_folder

        device = torch.device(device) if device is not None else best_device()
        module, config = load_model_folder(folder, device)
        kind = CaptionerModel if config.model.architecture == "captioner" else Model
        return kind(module, config, device)

    @property
    def image_size(self) -> int:
        return self.config.model.vision.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.model.embed_dim

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def pixels(self, images: Iterable) -> torch.Tensor:
        """Images (PIL, path or bytes) -> float (N, 3, S, S) in [0, 1]; a bad image raises BadImage."""
        from visembed.data import load_image, to_tensor

        return torch.stack([to_tensor(load_image(img), self.image_size) for img in images]).float() / 255.0

    @torch.no_grad()
    def encode_image(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError("encode_image takes a list of images (PIL images, paths or bytes), not one image")
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.pixels(images[start : start + batch_size]).to(self.device)
            with self._autocast():
                out.append(F.normalize(self.module.encode_image(pixels).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        if not trains_text_tower(self.config):
            raise TextTowerUntrained(
                f"this model was trained on images alone (train.task={self.config.train.task}): its text tower is "
                "untrained, so it cannot answer text queries; search by image instead, or train the text side "
                "(visembed train --init MODEL --data CAPTIONED_DATA)")
        out = []
        for start in range(0, len(texts), batch_size):
            with self._autocast():
                out.append(F.normalize(self.module.encode_text(list(texts[start : start + batch_size])).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)


CAPTION_NO_REPEAT = 3  # no 3 tokens twice in a caption: beams of a small LM loop ("The The The ...")
HEDGE_BELOW = 0.5  # mean token probability under which a caption is hedged ("May show ...")
ALT_TEXT_LIMIT = 125  # characters: screen readers' guidance for alt text
_IMAGE_OF = re.compile(r"^(an? |the )?(image|picture|photo|photograph) of (an? )?", re.I)


class CaptionerModel(Model):
    """A captioner (`visembed train-captioner`): describes images and answers questions about them;
    it is also the dual encoder it was built on (`encode_image`, `encode_text`). Its hints come from
    the training captions and the open vocabularies its config names (`model.captioner.vocabulary`;
    `use_vocabulary` changes them)."""

    def __init__(self, module: torch.nn.Module, config, device: str | torch.device | None = None):
        from visembed.models.caption_constraints import Naming

        super().__init__(module, config, device)
        self.naming = Naming()
        self.use_vocabulary(config.model.captioner.vocabulary)
        self.feature_runner = None  # numpy pixels -> numpy features, where the image side runs elsewhere

    def run_image_side_with(self, runner) -> None:
        """Compute the frozen image features with `runner` (float32 pixels (B, 3, S, S) in [0, 1] ->
        float32 (B, D + cells * W), as `Captioner.features`) instead of the torch tower: the onnx
        backend hands its exported graph here (`visembed.interop.onnx_runtime`)."""
        self.feature_runner = runner

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> the frozen encoder's features (`Captioner.features`)."""
        if self.feature_runner is None:
            return self.module.features(pixels)
        return torch.from_numpy(self.feature_runner(pixels.float().cpu().numpy())).to(self.device)

    def use_vocabulary(self, sources) -> None:
        """Hints from these names besides the training captions: "emoji", "cedict", files of names
        (see `models.vocabulary`); ["none"]: the training captions alone. Vectors are cached per model."""
        from visembed.models.vocabulary import read_vocabulary
        from visembed.paths import cache_root

        if self.module.hints:
            self.module.use_vocabulary(read_vocabulary(list(sources)), cache_root() / "vocabulary")

    def _answer(self, images: Sequence, conversations: list[list[dict]], max_new_tokens: int, candidates: int = 1,
                no_repeat: int | None = None, language: str | None = None):
        """[(text, confidence)] of the model's next turn in each conversation about its image (the
        prompt naming the captions and vocabulary names closest to the image where the model was
        trained with hints). `candidates` > 1: that many answers by beam search, and the one the
        dual encoder puts closest to the image is kept (the LM proposes, the contrastive space judges
        the fit; one naming a hint verbatim is preferred); `no_repeat`: see
        `Captioner.generate_candidates`. The answer keeps to the script of `language` (default: the
        conversation's) and copies hinted names (`self.naming`)."""
        from visembed.data.conversations import conversation_language
        from visembed.models.captioner import DecodingRules
        from visembed.models.chat_format import encode_with_hints

        limit = self.config.model.captioner.max_tokens
        pixels = self.pixels(images).to(self.device)
        languages = [conversation_language(t) for t in conversations]
        naming = self.naming
        with self._autocast():
            features = self.image_features(pixels)
            hints = self.module.hints_for(features, languages, count=naming.hints, seen_margin=naming.seen_margin)
            prompts = [encode_with_hints(self.module.tokenizer, turns, texts, limit, prompt=True)
                       for turns, texts in zip(conversations, hints)]
            # a hinted name may be copied in another script only when the answer is in the hints' language
            exempt = [names if (language or lang) == lang else [] for names, lang in zip(hints, languages)]
            rules = DecodingRules([language or lang for lang in languages], exempt, naming.copy_bonus,
                                  naming.start_bonus) if naming.rules else None
            found = self.module.generate_candidates(pixels, prompts, max_new_tokens, candidates, features=features,
                                                    no_repeat=no_repeat, rules=rules)
            if candidates == 1:
                return [group[0] for group in found]
            if naming.rules and naming.swap_names:  # the beams' name slots filled with each hint of the answer's script
                found = [self.module.with_hints_swapped_in(group, names, lang)
                         for group, names, lang in zip(found, exempt, languages)]
            best = self.module.closest_texts(features, [[text for text, _ in group] for group in found], hints,
                                             naming.name_bonus if naming.rules else 0.0)
            return [group[i] for group, i in zip(found, best)]

    @torch.no_grad()
    def caption(self, images: Sequence, *, language: str = "en", detail: bool = False, max_new_tokens: int = 32,
                batch_size: int = 32, candidates: int | None = None) -> list[str]:
        """Alt text for each image: one short sentence (at most 125 characters) in `language`
        ("en" or "zh"), hedged ("May show ...") when the model is unsure; `detail`: a longer
        description, not shortened. `candidates`: captions proposed per image (beam search), of
        which the one closest to the image in the dual-encoder space is kept; 1: greedy; default:
        the model's `model.captioner.candidates`."""
        if candidates is None:
            candidates = self.config.model.captioner.candidates
        if candidates < 1:
            raise ValueError(f"candidates must be 1 or more, got {candidates}")
        from visembed.data.conversations import IMAGE_TOKEN, caption_prompt

        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError("caption takes a list of images (PIL images, paths or bytes), not one image")
        if language not in ("en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
        turns = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{caption_prompt(language, detail=detail)}"}]
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            answers = self._answer(chunk, [turns] * len(chunk), max_new_tokens, candidates, CAPTION_NO_REPEAT, language)
            out.extend(_alt_text(text, confidence, language, detail) for text, confidence in answers)
        return out

    @torch.no_grad()
    def reply(self, image, messages: list[dict], *, max_new_tokens: int = 48,
              language: str | None = None) -> tuple[str, str | None]:
        """(the assistant's next reply, a note when the oldest turns were dropped to fit the context);
        `language` ("en", "zh"): the reply's script (default: that of the first message)."""
        from visembed.models.chat_format import fit_dialogue

        if language not in (None, "en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
        turns = chat_turns(messages)
        limit = self.config.model.captioner.max_tokens
        turns, dropped, cut = fit_dialogue(self.module.tokenizer, turns, limit)
        (text, _), = self._answer([image], [turns], max_new_tokens, language=language)
        notes = [f"the dialogue was too long: its oldest {dropped} turn(s) were left out"] if dropped else []
        notes += ["the question was too long for the model: only its beginning was read"] if cut else []
        note = "; ".join(notes) or None
        return text, note

    def chat(self, image, messages: list[dict], *, max_new_tokens: int = 48, language: str | None = None) -> str:
        """The assistant's reply to `messages` ([{"role": "user" | "assistant", "content": str}],
        ending with the user's) about `image`, in `language`'s script (default: the first message's).
        Over-long dialogues lose their oldest turns (with a warning)."""
        import warnings

        text, note = self.reply(image, messages, max_new_tokens=max_new_tokens, language=language)
        if note:
            warnings.warn(note, stacklevel=2)
        return text


def chat_turns(messages) -> list[dict]:
    """Checked chat messages -> captioner turns, the image placeholder at the start of the first."""
    from visembed.data.conversations import IMAGE_TOKEN

    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': 'user' | 'assistant', 'content': str}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or \
                message.get("role") not in ("user", "assistant"):
            raise ValueError(f"message {i + 1} must be {{'role': 'user' | 'assistant', 'content': str}}")
        content = message["content"]
        while IMAGE_TOKEN in content:  # "<ima<image>ge>" holds another once the inner one is gone
            content = content.replace(IMAGE_TOKEN, "")
        content = content.strip()
        if not content:
            raise ValueError(f"message {i + 1} is empty")
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"message {i + 1} must be the {expected}'s: messages alternate, starting with the user's")
        turns.append({"role": expected, "content": content})
    if turns[-1]["role"] != "user":
        raise ValueError("the last message must be the user's (the model answers it)")
    turns[0] = {"role": "user", "content": f"{IMAGE_TOKEN}\n{turns[0]['content']}"}
    return turns


def _alt_text(text: str, confidence: float, language: str, detail: bool) -> str:
    """A generated answer as alt text: no "image of", hedged when unsure, at most 125 characters."""
    text = _IMAGE_OF.sub("", text.strip()).strip()
    if text and confidence < HEDGE_BELOW:
        text = "可能是" + text if language == "zh" else "May show " + text[0].lower() + text[1:]
    elif text and language == "en":
        text = text[0].upper() + text[1:]
    if not detail and len(text) > ALT_TEXT_LIMIT:
        cut = text[: ALT_TEXT_LIMIT - 1]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",;: ") + "…"
    return text
