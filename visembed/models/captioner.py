"""A captioner: a trained dual encoder (frozen) whose image features become prefix tokens of a causal
language model, which then describes the image or answers questions about it (LLaVA's recipe, with
ClipCap's use of the contrastive embedding).

    pixels -> image tower -> cells (B, N, W)   -> projector (Linear-GELU-Linear) -> N prefix tokens
                          -> embedding (B, D)  -> projector (Linear-GELU-Linear) -> K prefix tokens (model.captioner.embedding_tokens)
    [bos] USER: <prefix> question ASSISTANT: -> LM (`inputs_embeds`) -> answer

The embedding token carries what contrastive training aligned with words; the cells carry layout
and detail. With `model.captioner.hints` > 0 the prompt also names the training captions closest to
the image in the dual-encoder space (`hints_for`; the bank is HINTS_FILE in the model folder). The dual encoder keeps working as one (`encode_image`, `encode_text`), so a captioner
folder also searches and serves as a plain model.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import ModelConfig
from visembed.models.chat_format import IGNORE, Encoded
from visembed.models.dual_encoder import DualEncoder
from visembed.models.lm import build_lm, save_lm_assets, special_ids

HINTS_FILE = "hints.json"  # {language: [caption, ...]}: the captions a prompt's hints come from


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class Captioner(nn.Module):
    def __init__(self, cfg: ModelConfig, encoder: DualEncoder, lm: nn.Module, tokenizer,
                 hint_bank: dict[str, list[str]] | None = None):
        super().__init__()
        self.hint_bank = hint_bank or {}  # {language: captions}; no hints without one
        self.vocabulary: dict[str, list[str]] = {}  # names beyond the bank (`use_vocabulary`), at inference
        self.vocabulary_cache = None  # where the vocabulary's vectors are kept (None: made in memory)
        self._hint_vectors: dict[str, tuple[list[str], torch.Tensor]] = {}  # bank + vocabulary, when first needed
        self._known_names: dict[str, set[str]] = {}  # the bank's captions as a set, per language
        self.cfg = cfg
        self.encoder = encoder.requires_grad_(False).eval()
        self.lm = lm
        self.tokenizer = tokenizer
        hidden, lm_width = cfg.captioner.projector_hidden, lm.get_input_embeddings().embedding_dim
        self.cell_projector = _mlp(encoder.image_token_width, hidden, lm_width)
        self.embedding_tokens = cfg.captioner.embedding_tokens
        self.embedding_projector = (_mlp(cfg.embed_dim, hidden, lm_width * self.embedding_tokens)
                                    if self.embedding_tokens else None)  # 0: the cells alone, as LLaVA
        self.bos, self.eos, self.pad = special_ids(tokenizer)
        # the frozen encoder's features of each distinct image, where its tower caches (a locked tower)
        tower_cache = encoder.vision.feature_cache
        if tower_cache is not None:
            from visembed.models.feature_cache import FeatureCache

            self.feature_cache = FeatureCache(tower_cache.limit)
        else:
            self.feature_cache = None

    def train(self, mode: bool = True) -> "Captioner":
        super().train(mode)
        self.encoder.eval()  # frozen, BatchNorm statistics included
        return self

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    # the dual encoder's own API, so a captioner folder is also a search model
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(pixels)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode_text(texts)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.normalize_pixels(pixels)

    @torch.no_grad()
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """-> (B, D + N * W): the L2-normalised embedding and the tower's cells, flat (cacheable)."""
        tokens = self.encoder.image_tokens(pixels)  # (B, N, W)
        embedding = F.normalize(self.encoder.embed_image_tokens(tokens), dim=-1)  # (B, D)
        return torch.cat([embedding, tokens.flatten(1)], dim=1).float()

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> the frozen encoder's (B, D + N * W) (see `_image_features`),
        from the feature cache where there is one."""
        if self.feature_cache is not None:
            return self.feature_cache(self._image_features, pixels)
        return self._image_features(pixels)

    @property
    def hints(self) -> int:
        """Captions shown per prompt: the config's count, where the folder has a bank to draw them from."""
        return self.cfg.captioner.hints if self.hint_bank else 0

    @torch.no_grad()
    def hints_for(self, features: torch.Tensor, languages: list[str],
                  exclude: list[set[str]] | None = None, count: int | None = None,
                  seen_margin: float = 0.0) -> list[list[str]]:
        """The `hints` (or `count`) bank captions and vocabulary names closest to each image (most
        similar first), in each row's language, leaving out the row's `exclude` texts (in training:
        the image's own captions, as for a concept never seen). `seen_margin` is taken off the
        cosine of every training caption: calibrated stacking (Chao et al., 2016), since a dual
        encoder scores the captions it was trained on higher than names it never saw."""
        embedding = features[:, : self.cfg.embed_dim]
        count = self.hints if count is None or not self.hints else count
        out = []
        for b, language in enumerate(languages):
            bank = self.hint_bank.get(language) or []
            if not count or not bank:
                out.append([])
                continue
            skip = exclude[b] if exclude else set()
            texts, vectors = self.hint_pool(language)
            scores = vectors.to(embedding) @ embedding[b]
            if seen_margin:
                scores[: len(bank)] -= seen_margin  # the pool is the bank, then the vocabulary's other names
            top = scores.topk(min(len(texts), count + len(skip))).indices.tolist()
            out.append([texts[i] for i in top if texts[i] not in skip][:count])
        return out

    def use_vocabulary(self, names: dict[str, list[str]], cache_dir: str | Path | None = None) -> None:
        """Draw hints from `names` ({language: names}, see `models.vocabulary`) besides the training
        captions; their vectors are kept in `cache_dir` (made once per model and vocabulary)."""
        self.vocabulary = {language: list(texts) for language, texts in names.items()}
        self.vocabulary_cache = Path(cache_dir) if cache_dir is not None else None
        self._hint_vectors = {}

    def hint_pool(self, language: str) -> tuple[list[str], torch.Tensor]:
        """(texts, (T, D) vectors) a hint in `language` is chosen from: the bank, then the vocabulary."""
        if language not in self._hint_vectors:  # the encoder is frozen: the same vectors every time
            bank = self.hint_bank[language]
            known = set(bank)
            extra = [t for t in self.vocabulary.get(language, []) if t not in known]
            vectors = self._text_vectors(bank)
            if extra:
                from visembed.models.vocabulary import cached_vectors, text_side_digest

                digest = text_side_digest(self.encoder) if self.vocabulary_cache is not None else ""
                vectors = torch.cat([vectors, cached_vectors(extra, digest, self._text_vectors, self.vocabulary_cache)])
            self._hint_vectors[language] = (bank + extra, vectors)
        return self._hint_vectors[language]

    @torch.no_grad()
    def _text_vectors(self, texts: list[str], batch_size: int = 512) -> torch.Tensor:
        """texts -> (T, D) L2-normalised dual-encoder text embeddings, float32."""
        return torch.cat([F.normalize(self.encoder.encode_text(texts[i : i + batch_size]).float(), dim=-1)
                          for i in range(0, len(texts), batch_size)])

    def visual_prefix(self, pixels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] (or their `features`) -> prefix tokens (B, K + N, LM width):
        K from the embedding."""
        flat = self.features(pixels) if features is None else features
        d = self.cfg.embed_dim
        cells = flat[:, d:].view(len(flat), -1, self.encoder.image_token_width)  # (B, N, W)
        if self.embedding_projector is None:
            return self.cell_projector(cells)
        embedding = self.embedding_projector(flat[:, :d]).view(len(flat), self.embedding_tokens, -1)  # (B, K, H)
        return torch.cat([embedding, self.cell_projector(cells)], dim=1)

    def _spliced(self, prefix: torch.Tensor, rows: list[Encoded], left_pad: bool):
        """Embeddings with each row's prefix spliced in at its image position, padded to one length:
        (embeds (B, L, H), attention mask (B, L), labels (B, L))."""
        table = self.lm.get_input_embeddings()
        device = prefix.device
        embeds, labels = [], []
        for b, row in enumerate(rows):
            ids = torch.tensor(row.ids, dtype=torch.long, device=device)
            lab = torch.tensor(row.labels, dtype=torch.long, device=device)
            words = table(ids)  # (T, H)
            embeds.append(torch.cat([words[: row.image_at], prefix[b], words[row.image_at :]]))
            labels.append(torch.cat([lab[: row.image_at], torch.full((prefix.shape[1],), IGNORE, device=device),
                                     lab[row.image_at :]]))
        length = max(len(e) for e in embeds)
        out_e = prefix.new_zeros(len(rows), length, prefix.shape[-1])
        out_m = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        out_l = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=device)
        for b, (e, lab) in enumerate(zip(embeds, labels)):
            span = slice(length - len(e), length) if left_pad else slice(0, len(e))
            out_e[b, span], out_m[b, span], out_l[b, span] = e, 1, lab
        return out_e, out_m, out_l

    def forward(self, pixels: torch.Tensor, rows: list[Encoded], features: torch.Tensor | None = None) -> torch.Tensor:
        """The summed next-token loss over the assistant's tokens of every row (teacher forcing);
        divide by `learnt_tokens(rows)` for the mean. `features`: `self.features(pixels)`, if at hand."""
        embeds, mask, labels = self._spliced(self.visual_prefix(pixels, features), rows, left_pad=False)
        logits = self.lm(inputs_embeds=embeds.to(self.lm.dtype), attention_mask=mask, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                               reduction="sum")

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, prompts: list[Encoded], max_new_tokens: int,
                 features: torch.Tensor | None = None) -> list[tuple[str, float]]:
        """Greedy answers (KV cache, stopping at eos): [(text, mean probability of its tokens)]."""
        return [best for best, in self.generate_candidates(pixels, prompts, max_new_tokens, 1, features)]

    @torch.no_grad()
    def generate_candidates(self, pixels: torch.Tensor, prompts: list[Encoded], max_new_tokens: int, n: int,
                            features: torch.Tensor | None = None, no_repeat: int | None = None,
                            rules: DecodingRules | None = None) -> list[list[tuple[str, float]]]:
        """The `n` best answers to each prompt by beam search of width `n` (greedy for 1), the LM's
        favourite first: [[(text, mean probability of its tokens)] * n]. `no_repeat`: no run of that
        many tokens twice in an answer (a small LM's beams otherwise loop: "The The The ...");
        `rules`: copy the hinted names, keep to one script (`models.caption_constraints`)."""
        processors = None
        if rules is not None:
            from transformers import LogitsProcessorList

            from visembed.models.caption_constraints import CopyAndScript

            processors = LogitsProcessorList([CopyAndScript(self.tokenizer, rules.languages, rules.names, n,
                                                            rules.copy_bonus, rules.start_bonus)])
        embeds, mask, _ = self._spliced(self.visual_prefix(pixels, features), prompts, left_pad=True)
        positions = getattr(self.lm.config, "max_position_embeddings", None)
        if positions:  # a learnt position table ends somewhere
            max_new_tokens = max(1, min(max_new_tokens, positions - embeds.shape[1]))
        with warnings.catch_warnings():  # the n-gram rule applies to the answer only, as wanted here
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds")
            out = self.lm.generate(inputs_embeds=embeds.to(self.lm.dtype), attention_mask=mask, do_sample=False,
                                   num_beams=n, num_return_sequences=n, max_new_tokens=max_new_tokens,
                                   no_repeat_ngram_size=no_repeat or 0, logits_processor=processors,
                                   eos_token_id=self.eos, pad_token_id=self.pad, output_scores=True,
                                   return_dict_in_generate=True)
        steps = len(out.scores)
        new = out.sequences[:, -steps:] if steps else out.sequences[:, :0]  # (B * n, T) generated ids
        if steps:  # each generated token's log-probability, whichever beam it came from
            logp = self.lm.compute_transition_scores(new, out.scores, getattr(out, "beam_indices", None),
                                                     normalize_logits=True).float()
        results = []
        for row in range(len(new)):
            ids = new[row].tolist()
            length = ids.index(self.eos) if self.eos in ids else len(ids)
            confidence = float(logp[row, :length].exp().mean()) if length else 0.0
            results.append((self.tokenizer.decode(ids[:length], skip_special_tokens=True).strip(), confidence))
        return [results[b * n : (b + 1) * n] for b in range(len(prompts))]

    def with_hints_swapped_in(self, candidates: list[tuple[str, float]], hints: list[str],
                              language: str) -> list[tuple[str, float]]:
        """`candidates` and, for each, its name slot filled with each of `hints` (see
        `caption_constraints.with_names_swapped`; the known names are the bank's in `language`)."""
        from visembed.models.caption_constraints import with_names_swapped

        if language not in self._known_names:
            self._known_names[language] = set(self.hint_bank.get(language) or [])
        return with_names_swapped(candidates, hints, self._known_names[language] | set(hints))

    @torch.no_grad()
    def closest_texts(self, features: torch.Tensor, texts: list[list[str]], names: list[list[str]] | None = None,
                      name_bonus: float = 0.0) -> list[int]:
        """For each image, the index of the text among its `texts` that the dual encoder puts closest
        to it (how a caption is chosen among candidates: the contrastive space judges the fit);
        `names`: each image's hinted names, likeliest first (calibrated stacking ranked them); a text
        that names the first verbatim scores `name_bonus` more (the retrieval's best guess at the
        name; the dual encoder still judges the sentence around it)."""
        from visembed.models.caption_constraints import contains_hint

        embedding = features[:, : self.cfg.embed_dim]
        vectors = self._text_vectors([t for group in texts for t in group]).to(embedding)
        best, start = [], 0
        for b, group in enumerate(texts):  # each group non-empty: one text per candidate
            scores = vectors[start : start + len(group)] @ embedding[b]
            if names and name_bonus:
                scores = scores + name_bonus * torch.tensor([contains_hint(t, names[b][:1]) for t in group]).to(scores)
            best.append(int(scores.argmax()))
            start += len(group)
        return best

    def layer_groups(self) -> list[nn.Module]:
        """One group for layer-wise learning-rate decay: the projectors and the LM (the encoder is frozen)."""
        return [self]

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def without_feature_cache(self) -> "Captioner":
        """No cached image features, the encoder's tower's nor the captioner's own."""
        self.encoder.without_feature_cache()
        self.feature_cache = None
        return self

    def save_assets(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.encoder.save_assets(out_dir)
        save_lm_assets(self.lm, self.tokenizer, out_dir)
        if self.hint_bank:
            save_hint_bank(self.hint_bank, out_dir)


@dataclasses.dataclass
class DecodingRules:
    """What `generate_candidates` enforces per prompt (see `models.caption_constraints`)."""

    languages: list[str | None]  # the script of each answer ("en", "zh"; None: either)
    names: list[list[str]]  # the names each prompt hinted, to be copied verbatim
    copy_bonus: float = 0.0  # added to the log-probability of a started name's next token
    start_bonus: float = 0.0  # added to that of a name's first token


def save_hint_bank(bank: dict[str, list[str]], out_dir: str | Path) -> None:
    from visembed.atomic import atomic_write_text

    atomic_write_text(Path(out_dir) / HINTS_FILE, json.dumps(bank, ensure_ascii=False))


def read_hint_bank(folder: str | Path) -> dict[str, list[str]]:
    """The hint bank a model folder holds ({} without one: a captioner trained without hints)."""
    path = Path(folder) / HINTS_FILE
    if not path.is_file():
        return {}
    try:
        bank = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested 100,000 deep
        raise ValueError(f"{path} is not a hint bank ({err}); train the captioner again") from None
    if not isinstance(bank, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                             for v in bank.values()):
        raise ValueError(f"{path} must map a language to a list of captions")
    return bank


def learnt_tokens(rows: list[Encoded]) -> int:
    """How many tokens of `rows` the loss learns (each predicted from the one before it)."""
    return sum(sum(1 for label in row.labels[1:] if label != IGNORE) for row in rows)


def build_captioner(cfg: ModelConfig, asset_dir: str | Path, pretrained: bool) -> Captioner:
    """A captioner of `cfg`; `pretrained`: the dual encoder's weights from `cfg.captioner.vision` and
    the LM from its source (a fresh run), else both come from a model folder afterwards."""
    from visembed.checkpoint import build_fitting, load_weights, weights_path
    from visembed.models.towers import build_text, build_vision

    if asset_dir is None:
        raise ValueError("a captioner needs its asset folder (tokenizers, LM config)")
    encoder_cfg = dataclasses.replace(cfg, architecture="dual_encoder")

    def build_encoder() -> DualEncoder:
        return DualEncoder(encoder_cfg, build_vision(encoder_cfg, pretrained=False), build_text(encoder_cfg, asset_dir))

    if pretrained:  # the --vision folder's config checked against its weights before anything is allocated
        encoder = build_fitting(build_encoder, weights_path(cfg.captioner.vision))
        load_weights(encoder, weights_path(cfg.captioner.vision))
    else:
        encoder = build_encoder()
    with torch.no_grad():  # the visual prefix's length: the tower's cells and the embedding
        size = cfg.vision.image_size
        prefix = cfg.captioner.embedding_tokens + encoder.image_tokens(torch.zeros(1, 3, size, size)).shape[1]
    lm, tokenizer = build_lm(cfg.captioner, Path(asset_dir), pretrained, prefix_tokens=prefix)
    bank = read_hint_bank(asset_dir) if cfg.captioner.hints else {}
    if cfg.captioner.hints and not bank and not pretrained:
        import sys

        print(f"note: {Path(asset_dir) / HINTS_FILE} is missing or empty although model.captioner.hints is "
              f"{cfg.captioner.hints}: captions are written without hints", file=sys.stderr, flush=True)
    return Captioner(cfg, encoder, lm, tokenizer, bank)


def check_fits(model: Captioner, weights: Path, folder: str | Path) -> None:
    """A saved projector must speak the LM's width: a mismatched pair fails naming both."""
    from safetensors import safe_open

    from visembed.checkpoint import ModelFolderError

    try:
        with safe_open(str(weights), "pt") as f:
            width = f.get_slice("cell_projector.2.weight").get_shape()[0] if "cell_projector.2.weight" in f.keys() \
                else None
    except Exception:  # a damaged file: load_weights names it
        return
    lm_width = model.lm.get_input_embeddings().embedding_dim
    if width is not None and width != lm_width:
        raise ModelFolderError(
            f"the language model in {Path(folder) / 'lm'} ({type(model.lm).__name__}, hidden size {lm_width}) does "
            f"not fit the image projector in {weights} (output size {width}): the LM and the vision side come from "
            "different captioners; train the captioner again with this LM (visembed train-captioner --lm ...)")
