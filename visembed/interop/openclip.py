"""OpenCLIP checkpoints -> visembed model folders (a ViT image tower and a BPE text transformer).

`convert_openclip(path, out_dir)` reads an OpenCLIP checkpoint and writes a folder that
`visembed.load`, `--init` and every command taking a model folder read (config.json,
model.safetensors, tokenizer.json, preprocessing.json, README.md).

`path` (what `openclip:PATH` names) is either
- a folder holding one checkpoint (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, or
  the only `*.safetensors` / `*.bin` / `*.pt` there) and its model config (`open_clip_config.json`,
  or the only `*.json` there besides tokenizer files), as OpenCLIP publishes them; or
- the checkpoint file itself, with its config beside it: `open_clip_config.json`, `<stem>.json`, or
  the only `*.json` in that folder.
The config is either OpenCLIP's model config (`{"embed_dim", "vision_cfg", "text_cfg", ...}`, as in
open_clip/model_configs/) or a published `open_clip_config.json` (`{"model_cfg": ..., "preprocess_cfg": ...}`,
whose mean and std then travel with the weights; OpenAI's otherwise). Checkpoints: a state dict in
`.safetensors`, or `.bin` / `.pt` read with `torch.load(weights_only=True)`, either the state dict
itself or a training checkpoint's `{"state_dict": ...}` (DDP's `module.` prefix removed). Float16
and bfloat16 weights become float32.

Supported: OpenCLIP's `CLIP` and `CustomTextCLIP` with its own ViT (class-token pooling, learned
positions) and text transformer (causal, pooled at the end-of-text token) and OpenAI's BPE;
`quick_gelu` (OpenAI's weights) maps onto the towers' `activation` option. An option that changes
what those compute (layer scale, timm or HF towers, other pooling, other tokenizers, ...) fails
with its name. Loading is strict: a weight the mapping does not know,
or a weight of our model that the checkpoint lacks, fails with its name.

Names (OpenCLIP -> visembed, REFERENCES.md): `visual.conv1` -> `vision.patch_embedding`,
`visual.class_embedding`, `visual.positional_embedding` -> `vision.position_embedding.weight`,
`ln_pre`/`ln_post` -> `pre_layrnorm`/`post_layernorm`, `transformer.resblocks.N` ->
`encoder.layers.N` with `ln_1`/`ln_2` -> `layer_norm1`/`layer_norm2`, `attn.in_proj_*` split into
`self_attn.{q,k,v}_proj`, `attn.out_proj` -> `self_attn.out_proj`, `mlp.c_fc`/`mlp.c_proj` ->
`mlp.fc1`/`mlp.fc2`; `token_embedding`, `positional_embedding` -> `text.position_embedding.weight`,
`ln_final` -> `text.final_layer_norm`; `visual.proj` and `text_projection` (x @ P) transposed into
`visual_projection` / `text_projection` (Linear weights); `logit_scale` (and `logit_bias`: a SigLIP
loss) as they are.

Tokenizer: a `tokenizer.json` beside the checkpoint (published OpenCLIP checkpoints ship the one of
transformers' CLIPTokenizerFast) is taken as it is; otherwise CLIP's tokenizer is rebuilt from
OpenAI's BPE merges shipped in visembed/interop/assets/ (MIT), the way transformers converts
CLIPTokenizer into CLIPTokenizerFast.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_NAME = "open_clip_config.json"
NOT_MODEL_CONFIGS = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "config.json",
                     "preprocessor_config.json", "generation_config.json"}
VOCAB_FILE = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"

# options that must keep OpenCLIP's default (what our towers compute); each key -> accepted values
_VISION_DEFAULTS = {"ls_init_value": (None,), "attentional_pool": (False,), "no_ln_pre": (False,),
                    "pos_embed_type": ("learnable",), "final_ln_after_pool": (False,), "pool_type": ("tok",),
                    "act_kwargs": (None,), "norm_kwargs": (None,), "block_type": (None, "default"),
                    "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,),
                    "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,), "timm_model_name": (None,)}
_VISION_FREE = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size",
                "patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",  # training-only or unused
                "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
_TEXT_DEFAULTS = {"hf_tokenizer_name": (None,), "tokenizer_mode": (None,), "tokenizer_kwargs": (None,),
                  "ls_init_value": (None,), "embed_cls": (False,), "no_causal_mask": (False,),
                  "final_ln_after_pool": (False,), "pool_type": ("argmax",), "proj_bias": (False,),
                  "proj_type": ("linear",), "act_kwargs": (None,), "norm_kwargs": (None,), "block_type": (None, "default"),
                  "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,),
                  "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,), "hf_model_name": (None,)}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "eos_id",
              "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_TOP_DEFAULTS = {"multimodal_cfg": (None,)}
_TOP_FREE = {"embed_dim", "vision_cfg", "text_cfg", "custom_text", "init_logit_scale", "init_logit_bias", "cast_dtype",
             "quick_gelu"}


class OpenCLIPImportError(ValueError):
    """An OpenCLIP checkpoint that cannot become a visembed model; the message names the file, key or option."""


def convert_openclip(path: str | Path, out_dir: str | Path) -> None:
    """Write a visembed model folder at `out_dir` (absent or empty) from the OpenCLIP checkpoint at `path`."""
    from visembed.atomic import atomic_write_text, new_dir
    from visembed.checkpoint import save_model_folder
    from visembed.models import build_model

    checkpoint, config_file = find_checkpoint(path)
    model_cfg, preprocess_cfg = read_openclip_config(config_file)
    state = read_openclip_state_dict(checkpoint)
    cfg = visembed_config(model_cfg, preprocess_cfg, has_logit_bias="logit_bias" in state)
    tokenizer, tokenizer_source = clip_tokenizer(checkpoint.parent)
    if tokenizer.vocab_size > cfg.model.text.vocab_size:
        raise OpenCLIPImportError(f"the tokenizer ({tokenizer_source}) has {tokenizer.vocab_size} tokens but "
                                  f"{config_file} says text_cfg.vocab_size {cfg.model.text.vocab_size}")

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; convert into a new folder")
    with new_dir(out_dir) as tmp:
        tokenizer.save(tmp)  # the text tower reads it from its folder
        with torch.device("meta"):  # shapes only: a config claiming more than the weights hold allocates nothing
            planned = build_model(cfg.model, tokenizer_dir=tmp, pretrained=False)
        converted = convert_state_dict(state, planned.state_dict(), checkpoint)
        model = build_model(cfg.model, tokenizer_dir=tmp, pretrained=False)
        model.load_state_dict(converted, strict=True)
        save_model_folder(model, cfg, tmp)
        atomic_write_text(tmp / "README.md", _card(cfg, checkpoint, config_file, tokenizer_source))


# --- finding and reading the files -------------------------------------------------------------


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, model-config JSON) for a folder or a checkpoint file (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        folder = path
        named = [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]
        found = named or sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
        if not found:
            raise OpenCLIPImportError(f"no OpenCLIP checkpoint in {folder} (looked for {', '.join(CHECKPOINT_NAMES)} "
                                      f"or a {'/'.join(CHECKPOINT_SUFFIXES)} file)")
        if len(found) > 1 and not named:
            raise OpenCLIPImportError(f"{folder} holds several checkpoints ({', '.join(p.name for p in found)}); "
                                      "name the file: openclip:FOLDER/FILE")
        checkpoint = found[0]
    elif path.is_file():
        checkpoint, folder = path, path.parent
    else:
        raise OpenCLIPImportError(f"{path} does not exist")
    for candidate in (folder / CONFIG_NAME, folder / f"{checkpoint.stem}.json"):
        if candidate.is_file():
            return checkpoint, candidate
    configs = sorted(p for p in folder.glob("*.json") if p.name not in NOT_MODEL_CONFIGS)
    if len(configs) == 1:
        return checkpoint, configs[0]
    raise OpenCLIPImportError(
        f"no OpenCLIP model config for {checkpoint.name}: put {CONFIG_NAME} (or {checkpoint.stem}.json, e.g. "
        "open_clip/model_configs/ViT-B-32.json) beside it" + (f"; found several: {[p.name for p in configs]}" if configs else ""))


def read_openclip_config(path: Path) -> tuple[dict, dict]:
    """(model config, preprocess config) from a model-config JSON or a published open_clip_config.json."""
    from visembed.checkpoint import read_json

    data = read_json(path, OpenCLIPImportError)  # strict: size, depth, duplicate keys, finite numbers
    if not isinstance(data, dict):
        raise OpenCLIPImportError(f"{path} is not an OpenCLIP model config (a JSON object is expected)")
    model_cfg, preprocess_cfg = (data["model_cfg"], data.get("preprocess_cfg") or {}) if "model_cfg" in data else (data, {})
    if not isinstance(model_cfg, dict):
        raise OpenCLIPImportError(f"{path}: model_cfg is a {type(model_cfg).__name__}, a JSON object is expected")
    if not isinstance(preprocess_cfg, dict):
        raise OpenCLIPImportError(f"{path}: preprocess_cfg is a {type(preprocess_cfg).__name__}, a JSON object is "
                                  "expected")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise OpenCLIPImportError(f"{path} is not an OpenCLIP model config: no {key!r}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg[key], dict):
            raise OpenCLIPImportError(f"{path}: {key} is a {type(model_cfg[key]).__name__}, a JSON object is expected")
    return model_cfg, preprocess_cfg


MAX_SIZE = 1 << 20  # no width, vocabulary, length or depth of a real CLIP comes near this


def _size(section: dict, key: str, default, where: str) -> int:
    """A size option (a whole number from 1 to MAX_SIZE), or an OpenCLIPImportError naming it."""
    value = section.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise OpenCLIPImportError(f"OpenCLIP option {where}{key} is {value!r:.40}; a whole number from 1 to "
                                  f"{MAX_SIZE:,} is expected")
    return value


def _ratio(section: dict, key: str, where: str) -> float:
    value = section.get(key, 4.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 64:
        raise OpenCLIPImportError(f"OpenCLIP option {where}{key} is {value!r:.40}; a positive number is expected")
    return float(value)


def read_openclip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as float32, under OpenCLIP's own names."""
    if path.suffix == ".safetensors":
        from visembed.checkpoint import read_tensors

        state = read_tensors(path)
    else:
        import pickle

        import warnings

        try:
            with warnings.catch_warnings():  # ("Detected pickle protocol 4": torch's, about a file we may refuse)
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's text goes on to advise weights_only=False: never that
            raise OpenCLIPImportError(f"{path} holds Python objects besides tensors; visembed never unpickles them "
                                      "(convert the checkpoint to safetensors)") from None
        except Exception as err:  # pickle, zip and torch errors alike: one line that names the file
            raise OpenCLIPImportError(f"cannot read {path} with torch.load(weights_only=True): "
                                      f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # a training checkpoint {epoch, name, state_dict, optimizer, ...}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OpenCLIPImportError(f"{path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "text.token_embedding.weight" in state:  # CustomTextCLIP keeps the text tower under `text.`
        state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# --- config ----------------------------------------------------------------------------------------


def _check_options(section: dict, defaults: dict, free: set, where: str) -> None:
    for key, value in section.items():
        if key in free:
            continue
        if key not in defaults:
            raise OpenCLIPImportError(f"OpenCLIP option {where}{key} is unknown to visembed's import")
        if value not in defaults[key]:
            raise OpenCLIPImportError(f"OpenCLIP option {where}{key}={value!r} is not supported: visembed's towers "
                                      f"compute what {', '.join(map(repr, defaults[key]))} gives")


def visembed_config(model_cfg: dict, preprocess_cfg: dict, has_logit_bias: bool = False):
    """The RunConfig of the visembed model that computes what this OpenCLIP model computes."""
    from visembed.config import ConfigError, RunConfig, from_dict, to_dict

    _check_options(model_cfg, _TOP_DEFAULTS, _TOP_FREE, "")
    v, t = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    _check_options(v, _VISION_DEFAULTS, _VISION_FREE, "vision_cfg.")
    _check_options(t, _TEXT_DEFAULTS, _TEXT_FREE, "text_cfg.")
    if isinstance(v.get("layers", 12), (list, tuple)):
        raise OpenCLIPImportError("OpenCLIP vision_cfg.layers is a list (a ModifiedResNet image tower): only ViT towers import")
    size = v.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(map(str, size))) != 1 or not size:
            raise OpenCLIPImportError(f"OpenCLIP vision_cfg.image_size={size} is not square: visembed's ViT is")
        v["image_size"] = size[0]
    size = _size(v, "image_size", 224, "vision_cfg.")
    width = _size(v, "width", 768, "vision_cfg.")
    head_width = _size(v, "head_width", 64, "vision_cfg.")
    sizes = {"embed_dim": _size(model_cfg, "embed_dim", None, ""), "patch_size": _size(v, "patch_size", 16, "vision_cfg."),
             "vision_depth": _size(v, "layers", 12, "vision_cfg."), "vocab_size": _size(t, "vocab_size", 49408, "text_cfg."),
             "context_length": _size(t, "context_length", 77, "text_cfg."), "text_width": _size(t, "width", 512, "text_cfg."),
             "text_depth": _size(t, "layers", 12, "text_cfg."), "text_heads": _size(t, "heads", 8, "text_cfg."),
             "vision_mlp": _ratio(v, "mlp_ratio", "vision_cfg."), "text_mlp": _ratio(t, "mlp_ratio", "text_cfg.")}
    if width % head_width:
        raise OpenCLIPImportError(f"OpenCLIP vision_cfg.width {width} is not a multiple of head_width {head_width}")
    cfg = to_dict(RunConfig())
    cfg["model"].update({
        "embed_dim": sizes["embed_dim"],
        "loss": "siglip" if has_logit_bias else "clip",
        "vision": {**cfg["model"]["vision"], "kind": "vit", "image_size": size, "patch_size": sizes["patch_size"],
                   "width": width, "depth": sizes["vision_depth"], "heads": width // head_width,
                   "mlp_ratio": sizes["vision_mlp"], "head": "linear",
                   "mean": [float(x) for x in _channels(preprocess_cfg.get("mean", OPENAI_MEAN))],
                   "std": [float(x) for x in _channels(preprocess_cfg.get("std", OPENAI_STD))]},
        "text": {**cfg["model"]["text"], "kind": "transformer", "vocab_size": sizes["vocab_size"],
                 "context_length": sizes["context_length"], "width": sizes["text_width"], "depth": sizes["text_depth"],
                 "heads": sizes["text_heads"], "mlp_ratio": sizes["text_mlp"]},
    })
    if model_cfg.get("quick_gelu", False):  # OpenAI's own weights: x * sigmoid(1.702 x) in every MLP
        if "activation" not in cfg["model"]["vision"]:
            raise OpenCLIPImportError("OpenCLIP option quick_gelu=True is not supported: this visembed has no tower "
                                      "activation option (model.vision.activation)")
        cfg["model"]["vision"]["activation"] = cfg["model"]["text"]["activation"] = "quick_gelu"
    for key in ("init_logit_scale", "init_logit_bias"):
        if model_cfg.get(key) is not None:
            cfg["model"][key] = float(model_cfg[key])
    cfg["data"]["train"] = ""  # trained elsewhere: the model card names the checkpoint
    try:
        return from_dict(cfg)
    except ConfigError as err:
        raise OpenCLIPImportError(f"the OpenCLIP config does not make a valid visembed model: {err}") from None


def _channels(values) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else [values] * 3
    return values * 3 if len(values) == 1 else values


# --- weights ---------------------------------------------------------------------------------------

_BLOCK_RENAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP_RENAMES = {
    "visual.conv1.weight": "vision.patch_embedding.weight",
    "visual.class_embedding": "vision.class_embedding",
    "visual.positional_embedding": "vision.position_embedding.weight",
    "visual.ln_pre.weight": "vision.pre_layrnorm.weight", "visual.ln_pre.bias": "vision.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision.post_layernorm.weight", "visual.ln_post.bias": "vision.post_layernorm.bias",
    "token_embedding.weight": "text.token_embedding.weight",
    "positional_embedding": "text.position_embedding.weight",
    "ln_final.weight": "text.final_layer_norm.weight", "ln_final.bias": "text.final_layer_norm.bias",
    "logit_scale": "logit_scale", "logit_bias": "logit_bias",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_TOWERS = {"visual.transformer.resblocks.": "vision.encoder.layers.", "transformer.resblocks.": "text.encoder.layers."}


def _rename(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One OpenCLIP tensor -> its visembed tensor(s); None for a name the mapping does not know."""
    if key in _TOP_RENAMES:
        return {_TOP_RENAMES[key]: tensor}
    if key in _TRANSPOSED:
        return {_TRANSPOSED[key]: tensor.t().contiguous()}  # x @ P == Linear with weight P.T
    for src, dst in _TOWERS.items():
        if not key.startswith(src):
            continue
        layer, _, rest = key[len(src):].partition(".")
        prefix = f"{dst}{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):  # (3W, ...) rows: q, then k, then v
            kind = rest.rsplit("_", 1)[1]
            return {f"{prefix}self_attn.{name}_proj.{kind}": part.contiguous()
                    for name, part in zip("qkv", tensor.chunk(3, dim=0))}
        module, _, param = rest.rpartition(".")
        if module in _BLOCK_RENAMES:
            return {f"{prefix}{_BLOCK_RENAMES[module]}.{param}": tensor}
    return None


def convert_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """OpenCLIP names -> visembed names, strictly: an unknown, missing or misshapen weight raises by name."""
    out = {}
    for key, tensor in state.items():
        if key == "attn_mask":  # the causal mask, a buffer some older checkpoints saved: ours is built in
            continue
        renamed = _rename(key, tensor)
        if renamed is None or not set(renamed) <= set(target):
            raise OpenCLIPImportError(f"unexpected weight {key!r} in {source}: visembed's model has no place for it "
                                      "(is the config beside it the checkpoint's own?)")
        out.update(renamed)
    if "logit_scale" in out:
        out["logit_scale"] = out["logit_scale"].reshape(())  # a scalar here, () or (1,) in OpenCLIP's files
    if "logit_bias" in out:
        out["logit_bias"] = out["logit_bias"].reshape(())
    missing = [k for k in target if k not in out]
    if missing:
        raise OpenCLIPImportError(f"{source} lacks {len(missing)} weight(s) the model needs, first {missing[0]!r}")
    for key, tensor in out.items():
        if target[key].is_floating_point() and not tensor.is_floating_point():
            raise OpenCLIPImportError(f"weight {key!r} from {source} is {str(tensor.dtype)[6:]}, not a float: visembed "
                                      "does not cast integer or bool weights into a float model")
        if tensor.shape != target[key].shape:
            raise OpenCLIPImportError(f"weight {key!r} from {source} has shape {tuple(tensor.shape)}, the config asks "
                                      f"for {tuple(target[key].shape)}")
    return out


# --- tokenizer -------------------------------------------------------------------------------------


def clip_tokenizer(folder: Path):
    """(BPETokenizer, where it came from): the folder's tokenizer.json, else CLIP's rebuilt from OpenAI's merges."""
    from visembed.models.bpe_tokenizer import BPETokenizer

    own = Path(folder) / "tokenizer.json"
    if own.is_file():
        try:
            return BPETokenizer.load(own), str(own)
        except Exception as err:  # a tokenizer.json of another convention: say which file
            raise OpenCLIPImportError(f"cannot use {own} as a CLIP tokenizer: {err}") from None
    return BPETokenizer(openai_clip_tokenizer()), f"OpenAI CLIP BPE ({VOCAB_FILE.name}, shipped with visembed)"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's / CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def openai_clip_tokenizer(vocab_file: Path = VOCAB_FILE):
    """A `tokenizers.Tokenizer` equal to transformers' CLIPTokenizerFast: 49,408 tokens, lower-cased,
    `<|startoftext|>` 49406 and `<|endoftext|>` 49407 (added by its post-processor)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as OpenAI's and OpenCLIP's tokenizers
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                               fuse_unk=False, unk_token="<|endoftext|>"))
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", vocab["<|endoftext|>"]),
                                                      ("<|startoftext|>", vocab["<|startoftext|>"]),
                                                      trim_offsets=False, add_prefix_space=False)
    return tok


def _card(cfg, checkpoint: Path, config_file: Path, tokenizer_source: str) -> str:
    from visembed.models.card import model_card

    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    card = model_card(cfg).replace("- training data: `` (language en)\n", "")
    return card + "\n".join([
        "", "## Imported from OpenCLIP", "",
        f"- checkpoint: `{checkpoint.name}` (sha256 {digest.hexdigest()[:16]}...), config `{config_file.name}`",
        f"- tokenizer: {tokenizer_source}",
        "- training data and licence: those of the checkpoint; see where it was published",
    ]) + "\n"
