"""A transformers `CLIPModel` or `SiglipModel` folder -> a visembed model folder (ViT + BPE text transformer).

Our towers are transformers' CLIP under other module names (pre-LN blocks, class token,
`pre_layrnorm`, `post_layernorm`, EOS pooling, bias-free projections, `logit_scale` as a log), so the
weights are renamed, never changed: `hf_names.py` holds the one table of names, used both ways (the
exports in `hf_export.py` and `llava.py` read it too). The tokenizer comes along as the folder's own
`tokenizer.json` (through transformers, so a folder with only `vocab.json` + `merges.txt` works),
used as it is: its post-processor adds `<|startoftext|>`/`<|endoftext|>` exactly as
`CLIPTokenizerFast` does. Preprocessing (size, mean, std) comes from the folder's image-processor
config.

SigLIP maps onto the same towers with SigLIP's options (config.py): the ViT without a class token or
pre-LayerNorm, with a patch bias and the attention-pooling head (`vision.pool = "map"`, weights
`vision_model.head.*` -> `vision.head.*`, no visual projection: `vision.head = "none"`); the text
transformer bidirectional, pooled at the last position of the text padded to 64 tokens with the
tokenizer's pad token, its `head` (a Linear with bias) as our `text_projection`; `gelu_tanh`,
LayerNorm eps 1e-6; `logit_scale` and `logit_bias` (shape (1,) there, scalars here), loss "siglip".
The text tower masks padded keys (`text.mask_padding`), as transformers does with the attention mask
its processor returns. The tokenizer must come as a `tokenizer.json` (SentencePiece-only folders
are refused: transformers' slow SiglipTokenizer also rewrites the text in Python before encoding).
SigLIP's image processor squashes an image to a square; visembed crops the centre square, so the
pixels agree for square images only (a warning says so at conversion).

Loading is strict: a weight the source lacks, or one it has that our model has no place for, fails
with its name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from visembed.atomic import atomic_write_text
from visembed.checkpoint import ModelFolderError, read_json, save_model_folder
from visembed.config import RunConfig, from_dict, to_dict
from visembed.interop.hf_names import HF_PREFIXES, IGNORED_HF_KEYS, SIGLIP_PREFIXES, from_hf_name, to_hf_name
from visembed.models.card import model_card

# transformers' hidden_act -> ours
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
LAYER_NORM_EPS = 1e-5  # torch's default (CLIP's)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise ModelFolderError(f"{folder} is not a transformers model folder (no config.json)")
    data = read_json(path)  # strict: size, depth, duplicate keys, finite numbers
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a transformers config (a JSON object is expected)")
    return data


MAX_SIZE = 1 << 20  # no width, vocabulary, length or depth of a real CLIP comes near this


def section(hf: dict, key: str, folder: Path) -> dict:
    """`hf[key]` (text_config, vision_config): an object, or empty when absent."""
    value = hf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelFolderError(f"{folder}/config.json: {key} is a {type(value).__name__}, a JSON object is expected")
    return value


_REQUIRED = object()


def size_field(tc: dict, key: str, which: str, folder: Path, default=_REQUIRED) -> int:
    """A size of the config (a whole number from 1 to MAX_SIZE), or a ModelFolderError naming it;
    a missing required one is a KeyError (the caller names the model kind)."""
    value = tc[key] if default is _REQUIRED else tc.get(key, default)
    if value is None and default is not _REQUIRED:
        value = default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        name = f"{which}_config.{key}" if which else key
        raise ModelFolderError(f"{folder}/config.json: {name} is {str(value)[:40]}; a whole number from 1 to "
                               f"{MAX_SIZE:,} is expected")
    return value


def _check_supported(hf: dict, folder: Path) -> str:
    """'clip' or 'siglip', or a ModelFolderError."""
    kind = hf.get("model_type")
    if not isinstance(kind, str):
        raise ModelFolderError(f"{folder}/config.json: model_type is {str(kind)[:40]}; a transformers model type "
                               "('clip' or 'siglip') is expected")
    if kind == "siglip2":
        raise ModelFolderError(
            f"{folder} is a SigLIP 2 model; hf: imports CLIPModel and SiglipModel folders: SigLIP 2's vision tower reads "
            "patches at their native aspect ratio (NaFlex), which visembed's ViT does not")
    if kind not in ("clip", "siglip"):
        raise ModelFolderError(f"{folder} holds a transformers {kind!r} model; hf: imports CLIPModel and SiglipModel "
                               "folders (model_type 'clip' or 'siglip')")
    return kind


def _tower_fields(tc: dict, which: str, folder: Path, default_act: str = "quick_gelu",
                  default_eps: float = LAYER_NORM_EPS) -> dict:
    """Sizes shared by both towers, checked against what our blocks can express."""
    act = tc.get("hidden_act", default_act)
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ModelFolderError(f"{folder}: {which}_config.hidden_act {act!r} is not supported "
                               f"({', '.join(ACTIVATIONS)})")
    eps = tc.get("layer_norm_eps", default_eps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ModelFolderError(f"{folder}: {which}_config.layer_norm_eps {eps} is not supported")
    width, hidden = size_field(tc, "hidden_size", which, folder), size_field(tc, "intermediate_size", which, folder)
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ModelFolderError(f"{folder}: {which}_config.intermediate_size {hidden} is not expressible as "
                               f"hidden_size x mlp_ratio")
    return {"width": width, "depth": size_field(tc, "num_hidden_layers", which, folder),
            "heads": size_field(tc, "num_attention_heads", which, folder),
            "mlp_ratio": ratio, "activation": ACTIVATIONS[act], "layer_norm_eps": float(eps)}


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _image_processor(folder: Path):
    """The folder's image processor (transformers'), its JSON read strictly first; None without one."""
    from transformers import AutoImageProcessor

    present = [folder / name for name in PROCESSOR_FILES if (folder / name).exists()]
    if not present:
        return None
    for path in present:
        if not isinstance(read_json(path), dict):
            raise ModelFolderError(f"{path} is not an image processor config (a JSON object is expected)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # fields of the wrong kind
            raise ModelFolderError(f"{folder}: the image processor config cannot be used ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    for name in ("image_mean", "image_std"):
        values = getattr(processor, name, None)
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            raise ModelFolderError(f"{folder}: the image processor's {name} is {str(values)[:40]}; three numbers are "
                                   "expected")
    if not all(x > 0 for x in processor.image_std):
        raise ModelFolderError(f"{folder}: the image processor's image_std must be positive")
    return processor


def _side(size, name: str):
    """A field of an image processor's size: a dict in transformers 4.x, a SizeDict in 5.x."""
    if size is None:
        return None
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def _preprocessing(folder: Path, image_size: int) -> dict:
    """Mean and std from the folder's image processor (CLIP's when it has none)."""
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    processor = _image_processor(folder)
    if processor is None:
        return {"mean": mean, "std": std}
    crop, size = getattr(processor, "crop_size", None), getattr(processor, "size", None)
    crop_side = _side(crop, "height") or image_size
    if _side(crop, "width") not in (None, crop_side):
        raise ModelFolderError(f"{folder}: the image processor crops to {_side(crop, 'width')} x {crop_side} px; the "
                               f"vision tower reads a {image_size} px square")
    short = _side(size, "shortest_edge") or crop_side
    if crop_side != image_size:
        raise ModelFolderError(f"{folder}: the image processor crops to {crop_side} px but the vision tower reads "
                               f"{image_size} px")
    if short != crop_side:
        warnings.warn(f"{folder}: the image processor resizes the shorter side to {short} px before its {crop_side} px "
                      f"centre crop; visembed resizes straight to {crop_side} px (the same picture only when they agree)")
    return {"mean": [float(x) for x in processor.image_mean], "std": [float(x) for x in processor.image_std]}


def _siglip_preprocessing(folder: Path, image_size: int) -> dict:
    """Mean and std of a SigLIP folder's image processor (0.5 when it has none); its resize to a square
    is checked against the tower's size."""
    processor = _image_processor(folder)
    if processor is None:
        return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    size = getattr(processor, "size", None)
    side = (_side(size, "height"), _side(size, "width"))
    if side != (image_size, image_size):
        raise ModelFolderError(f"{folder}: the image processor resizes to {size} but the vision tower reads "
                               f"{image_size} x {image_size} px")
    warnings.warn(f"{folder}: SigLIP's image processor squashes an image to {image_size} x {image_size} px; visembed "
                  "resizes the shorter side and crops the centre square (the same pixels for square images only)")
    return {"mean": [float(x) for x in processor.image_mean], "std": [float(x) for x in processor.image_std]}


def _siglip_run_config(hf: dict, folder: Path, state: dict | None) -> RunConfig:
    import math

    tc, vc = section(hf, "text_config", folder), section(hf, "vision_config", folder)
    try:
        fields = {"default_act": "gelu_pytorch_tanh", "default_eps": 1e-6}  # SiglipConfig's defaults
        width = size_field(tc, "hidden_size", "text", folder)
        text = {"kind": "transformer", "vocab_size": size_field(tc, "vocab_size", "text", folder, 32000),
                "context_length": size_field(tc, "max_position_embeddings", "text", folder, 64), **_tower_fields(tc, "text", folder, **fields),
                "pool": "last", "causal": False, "mask_padding": True, "projection_bias": True}
        image_size = size_field(vc, "image_size", "vision", folder, 224)
        vision = {"kind": "vit", "image_size": image_size, "patch_size": size_field(vc, "patch_size", "vision", folder, 16),
                  **_tower_fields(vc, "vision", folder, **fields), "pool": "map", "pre_norm": False, "patch_bias": True,
                  "head": "none", **_siglip_preprocessing(folder, image_size)}
    except KeyError as err:
        raise ModelFolderError(f"{folder}/config.json lacks {err.args[0]!r}, which a SiglipModel config has") from None
    if vc.get("num_channels", 3) != 3:
        raise ModelFolderError(f"{folder}: vision_config.num_channels must be 3 (RGB)")
    if not vc.get("vision_use_head", True):
        raise ModelFolderError(f"{folder}: vision_config.vision_use_head is false: the vision model has no pooled "
                               "output (SiglipModel's image features need the attention-pooling head)")
    embed_dim = size_field(tc, "projection_size", "text", folder, width)
    if embed_dim != vision["width"]:
        raise ModelFolderError(f"{folder}: text_config.projection_size {embed_dim} differs from the vision width "
                               f"{vision['width']}: the two embeddings could not be compared")
    scale, bias = 0.0, 0.0
    if state is not None and "logit_scale" in state and "logit_bias" in state:
        scale, bias = float(state["logit_scale"].reshape(-1)[0]), float(state["logit_bias"].reshape(-1)[0])
    data = to_dict(RunConfig())
    data["model"] = {**data["model"], "vision": {**data["model"]["vision"], **vision},
                     "text": {**data["model"]["text"], **text}, "embed_dim": embed_dim, "loss": "siglip",
                     "init_logit_scale": scale, "init_logit_bias": bias,
                     # the clamp must not cut the imported temperature (SigLIP's is about 110)
                     "max_logit_scale": max(100.0, math.ceil(math.exp(scale)) + 1.0)}
    return from_dict(data)


def hf_run_config(folder: Path, state: dict | None = None) -> RunConfig:
    """The visembed config of a transformers CLIPModel or SiglipModel folder (`state`: its weights, from
    which a SigLIP's logit scale and bias are taken into the config)."""
    hf = read_hf_config(folder)
    if _check_supported(hf, folder) == "siglip":
        return _siglip_run_config(hf, folder, state)
    tc, vc = section(hf, "text_config", folder), section(hf, "vision_config", folder)
    try:
        text = {"kind": "transformer", "vocab_size": size_field(tc, "vocab_size", "text", folder),
                "context_length": size_field(tc, "max_position_embeddings", "text", folder), **_tower_fields(tc, "text", folder)}
        image_size = size_field(vc, "image_size", "vision", folder)
        vision = {"kind": "vit", "image_size": image_size, "patch_size": size_field(vc, "patch_size", "vision", folder),
                  **_tower_fields(vc, "vision", folder), "head": "linear", **_preprocessing(folder, image_size)}
        if vc.get("num_channels", 3) != 3:
            raise ModelFolderError(f"{folder}: vision_config.num_channels must be 3 (RGB)")
        embed_dim = size_field(hf, "projection_dim", "", folder)
    except KeyError as err:
        raise ModelFolderError(f"{folder}/config.json lacks {err.args[0]!r}, which a CLIPModel config has") from None
    data = to_dict(RunConfig())
    data["model"] = {**data["model"], "vision": {**data["model"]["vision"], **vision},
                     "text": {**data["model"]["text"], **text}, "embed_dim": embed_dim, "loss": "clip",
                     "init_logit_scale": float(hf.get("logit_scale_init_value", 2.6592))}
    return from_dict(data)


def shard_files(folder: Path, index_name: str) -> list[Path]:
    """The shard files a `*.index.json` names: plain file names (or paths) inside `folder`, never
    outside it (an absolute path, `..`, or a link that leads out is refused)."""
    index = read_json(folder / index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFolderError(f"{folder / index_name} has no weight_map (an object: weight name -> shard file)")
    root = folder.resolve()
    files = []
    for name in sorted(set(weight_map.values()), key=str):
        if not isinstance(name, str) or not name or "\0" in name:
            raise ModelFolderError(f"{folder / index_name}: a weight_map entry is {str(name)[:40]!r}, not a file name")
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(root):
            raise ModelFolderError(f"{folder / index_name} names the shard {name[:80]!r} outside its folder; refused")
        if not path.is_file():
            raise ModelFolderError(f"{folder / index_name} names the shard {name[:80]!r}, which is not in {folder}")
        files.append(path)
    return files


def _read_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin through `torch.load(weights_only=True)`: plain tensors only, never code."""
    import pickle

    try:
        with warnings.catch_warnings():  # ("Detected pickle protocol 4": torch's, about a file we refuse anyway)
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # torch's text goes on to advise weights_only=False: never that
        raise ModelFolderError(f"{path} holds Python objects besides tensors; visembed never unpickles them "
                               "(convert the checkpoint to safetensors)") from None
    except Exception as err:  # a damaged zip or pickle: torch raises RuntimeError, EOFError, zip errors
        first = str(err).splitlines()[0][:160] if str(err) else ""
        raise ModelFolderError(f"{path} cannot be read as a state dict ({type(err).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFolderError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weights: safetensors (sharded or not), else pytorch_model.bin
    read with `torch.load(weights_only=True)`."""
    from visembed.checkpoint import read_tensors

    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "model.safetensors.index.json").exists():
        files = shard_files(folder, "model.safetensors.index.json")
    elif (folder / "pytorch_model.bin").is_file():
        files = [folder / "pytorch_model.bin"]
    elif (folder / "pytorch_model.bin.index.json").exists():
        files = shard_files(folder, "pytorch_model.bin.index.json")
    else:
        raise ModelFolderError(f"{folder} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_tensors(path) if path.suffix == ".safetensors" else _read_pickled_state(path))
    return state


def map_hf_state(hf_state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path,
                 prefixes=HF_PREFIXES, kind: str = "CLIPModel") -> dict[str, torch.Tensor]:
    """Rename transformers' weights to ours; strict: every expected weight present, nothing left over,
    shapes equal (a one-element tensor such as SigLIP's `logit_scale` of shape (1,) fills a scalar).
    The error names the weights."""
    state, unexpected = {}, []
    for name, tensor in hf_state.items():
        if name in IGNORED_HF_KEYS:
            continue
        ours = from_hf_name(name, prefixes)
        if ours is None or ours not in expected:
            unexpected.append(name)
            continue
        state[ours] = tensor
    missing = [to_hf_name(name, prefixes) or name for name in expected if name not in state]
    if missing or unexpected:
        raise ModelFolderError(f"weights in {source} do not fit a {kind} of its config (missing: {missing[:5]}, "
                               f"unexpected: {unexpected[:5]})")
    for name, tensor in state.items():
        if expected[name].is_floating_point() and not tensor.is_floating_point():
            raise ModelFolderError(f"weight {to_hf_name(name, prefixes)} in {source} is {str(tensor.dtype)[6:]}, not a "
                                   "float: visembed does not cast integer or bool weights into a float model")
        if tensor.shape != expected[name].shape and tensor.numel() == expected[name].numel() == 1:
            state[name] = tensor = tensor.reshape(expected[name].shape)
        if tensor.shape != expected[name].shape:
            raise ModelFolderError(f"weight {to_hf_name(name, prefixes)} in {source} has shape {tuple(tensor.shape)}, "
                                   f"the config makes it {tuple(expected[name].shape)}")
    return state


def save_hf_tokenizer(folder: Path, out_dir: Path, keep_pad: bool = False) -> None:
    """The folder's tokenizer as one `tokenizer.json` (transformers builds it from vocab/merges if needed);
    `keep_pad`: its pad token is written into the file's padding settings (SigLIP pools over padding)."""
    from transformers import AutoTokenizer

    from visembed.models.bpe_tokenizer import BPETokenizer

    if not (folder / "tokenizer.json").is_file() and not (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        raise ModelFolderError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json with merges.txt): the text "
                               "tower's token ids would mean nothing")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json"):
        if (folder / name).exists():
            read_json(folder / name)  # strict, before transformers parses it
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # transformers raises many kinds for a folder without tokenizer files
        raise ModelFolderError(f"{folder}: no usable tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelFolderError(f"{folder}: the tokenizer ({type(tokenizer).__name__}) has no fast (tokenizers) form to "
                               "import; visembed needs the folder's tokenizer.json")
    if keep_pad:
        if tokenizer.pad_token_id is None:
            raise ModelFolderError(f"{folder}: the tokenizer has no pad token (SigLIP pads every text to its context length)")
        backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    BPETokenizer(backend).save(out_dir)  # checks that it adds one begin and one end token


def convert_hf(folder: str | Path, out_dir: str | Path) -> None:
    """Write the visembed model folder of the transformers CLIPModel folder `folder` into `out_dir`."""
    from visembed.models import build_model

    folder, out_dir = Path(folder), Path(out_dir)
    siglip = _check_supported(read_hf_config(folder), folder) == "siglip"
    hf_state = read_hf_weights(folder)
    cfg = hf_run_config(folder, hf_state)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer(folder, out_dir, keep_pad=siglip)
    kind, prefixes = ("SiglipModel", SIGLIP_PREFIXES) if siglip else ("CLIPModel", HF_PREFIXES)
    with torch.device("meta"):  # shapes only: a config claiming more than the weights hold allocates nothing
        planned = build_model(cfg.model, tokenizer_dir=out_dir, pretrained=False)
    state = map_hf_state(hf_state, planned.state_dict(), folder, prefixes, kind)
    model = build_model(cfg.model, tokenizer_dir=out_dir, pretrained=False)
    model.load_state_dict(state, strict=True)
    save_model_folder(model, cfg, out_dir)
    card = model_card(cfg).replace("- training data: `builtin:shapes` (language en)\n", "")
    card += (f"\n## Imported from\n\n- the transformers {kind} folder `{folder.resolve()}`; licence and training "
             "data are those of that checkpoint (see its own model card)\n")
    atomic_write_text(out_dir / "README.md", card)
