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
from visembed.checkpoint import ModelFolderError, save_model_folder
from visembed.config import RunConfig, from_dict, to_dict
from visembed.interop.hf_names import HF_PREFIXES, IGNORED_HF_KEYS, SIGLIP_PREFIXES, from_hf_name, to_hf_name
from visembed.models.card import model_card

# transformers' hidden_act -> ours
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
LAYER_NORM_EPS = 1e-5  # torch's default (CLIP's)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a transformers model folder (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a transformers config (a JSON object is expected)")
    return data


def _check_supported(hf: dict, folder: Path) -> str:
    """'clip' or 'siglip', or a ModelFolderError."""
    kind = hf.get("model_type")
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
    if act not in ACTIVATIONS:
        raise ModelFolderError(f"{folder}: {which}_config.hidden_act {act!r} is not supported "
                               f"({', '.join(ACTIVATIONS)})")
    eps = float(tc.get("layer_norm_eps", default_eps))
    if not 0 < eps < 1:
        raise ModelFolderError(f"{folder}: {which}_config.layer_norm_eps {eps} is not supported")
    width, hidden = int(tc["hidden_size"]), int(tc["intermediate_size"])
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ModelFolderError(f"{folder}: {which}_config.intermediate_size {hidden} is not expressible as "
                               f"hidden_size x mlp_ratio")
    return {"width": width, "depth": int(tc["num_hidden_layers"]), "heads": int(tc["num_attention_heads"]),
            "mlp_ratio": ratio, "activation": ACTIVATIONS[act], "layer_norm_eps": eps}


def _preprocessing(folder: Path, image_size: int) -> dict:
    """Mean and std from the folder's image processor (CLIP's when it has none)."""
    from transformers import AutoImageProcessor

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        return {"mean": mean, "std": std}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = AutoImageProcessor.from_pretrained(folder)
    crop = getattr(processor, "crop_size", None) or {}
    size = getattr(processor, "size", None) or {}
    crop_side = crop.get("height", image_size) if isinstance(crop, dict) else image_size
    short = size.get("shortest_edge", crop_side) if isinstance(size, dict) else crop_side
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
    from transformers import AutoImageProcessor

    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = AutoImageProcessor.from_pretrained(folder)
    size = getattr(processor, "size", None) or {}
    def field(name):  # a dict in transformers 4.x, a SizeDict in 5.x
        return size.get(name) if isinstance(size, dict) else getattr(size, name, None)

    side = (field("height"), field("width"))
    if side != (image_size, image_size):
        raise ModelFolderError(f"{folder}: the image processor resizes to {size} but the vision tower reads "
                               f"{image_size} x {image_size} px")
    warnings.warn(f"{folder}: SigLIP's image processor squashes an image to {image_size} x {image_size} px; visembed "
                  "resizes the shorter side and crops the centre square (the same pixels for square images only)")
    return {"mean": [float(x) for x in processor.image_mean], "std": [float(x) for x in processor.image_std]}


def _siglip_run_config(hf: dict, folder: Path, state: dict | None) -> RunConfig:
    import math

    tc, vc = hf.get("text_config") or {}, hf.get("vision_config") or {}
    try:
        fields = {"default_act": "gelu_pytorch_tanh", "default_eps": 1e-6}  # SiglipConfig's defaults
        width = int(tc["hidden_size"])
        text = {"kind": "transformer", "vocab_size": int(tc.get("vocab_size", 32000)),
                "context_length": int(tc.get("max_position_embeddings", 64)), **_tower_fields(tc, "text", folder, **fields),
                "pool": "last", "causal": False, "mask_padding": True, "projection_bias": True}
        image_size = int(vc.get("image_size", 224))
        vision = {"kind": "vit", "image_size": image_size, "patch_size": int(vc.get("patch_size", 16)),
                  **_tower_fields(vc, "vision", folder, **fields), "pool": "map", "pre_norm": False, "patch_bias": True,
                  "head": "none", **_siglip_preprocessing(folder, image_size)}
    except KeyError as err:
        raise ModelFolderError(f"{folder}/config.json lacks {err.args[0]!r}, which a SiglipModel config has") from None
    if int(vc.get("num_channels", 3)) != 3:
        raise ModelFolderError(f"{folder}: vision_config.num_channels must be 3 (RGB)")
    if not vc.get("vision_use_head", True):
        raise ModelFolderError(f"{folder}: vision_config.vision_use_head is false: the vision model has no pooled "
                               "output (SiglipModel's image features need the attention-pooling head)")
    embed_dim = int(tc.get("projection_size") or width)
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
    tc, vc = hf.get("text_config") or {}, hf.get("vision_config") or {}
    try:
        text = {"kind": "transformer", "vocab_size": int(tc["vocab_size"]),
                "context_length": int(tc["max_position_embeddings"]), **_tower_fields(tc, "text", folder)}
        image_size = int(vc["image_size"])
        vision = {"kind": "vit", "image_size": image_size, "patch_size": int(vc["patch_size"]),
                  **_tower_fields(vc, "vision", folder), "head": "linear", **_preprocessing(folder, image_size)}
        if int(vc.get("num_channels", 3)) != 3:
            raise ModelFolderError(f"{folder}: vision_config.num_channels must be 3 (RGB)")
        embed_dim = int(hf["projection_dim"])
    except KeyError as err:
        raise ModelFolderError(f"{folder}/config.json lacks {err.args[0]!r}, which a CLIPModel config has") from None
    data = to_dict(RunConfig())
    data["model"] = {**data["model"], "vision": {**data["model"]["vision"], **vision},
                     "text": {**data["model"]["text"], **text}, "embed_dim": embed_dim, "loss": "clip",
                     "init_logit_scale": float(hf.get("logit_scale_init_value", 2.6592))}
    return from_dict(data)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weights: safetensors (sharded or not), else pytorch_model.bin
    read with `torch.load(weights_only=True)`."""
    from visembed.checkpoint import read_tensors

    def shards(index_name: str) -> list[Path]:
        index = json.loads((folder / index_name).read_text(encoding="utf-8"))
        return [folder / name for name in sorted(set(index["weight_map"].values()))]

    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        files = shards("model.safetensors.index.json")
    elif (folder / "pytorch_model.bin").is_file():
        files = [folder / "pytorch_model.bin"]
    elif (folder / "pytorch_model.bin.index.json").is_file():
        files = shards("pytorch_model.bin.index.json")
    else:
        raise ModelFolderError(f"{folder} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            state.update(read_tensors(path))
        else:
            try:
                state.update(torch.load(path, weights_only=True, map_location="cpu"))
            except Exception as err:  # a pickle that is not a plain state dict, or a damaged file
                raise ModelFolderError(f"{path} cannot be read as a state dict ({type(err).__name__}: {err})") from None
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
    model = build_model(cfg.model, tokenizer_dir=out_dir, pretrained=False)
    kind, prefixes = ("SiglipModel", SIGLIP_PREFIXES) if siglip else ("CLIPModel", HF_PREFIXES)
    model.load_state_dict(map_hf_state(hf_state, model.state_dict(), folder, prefixes, kind), strict=True)
    save_model_folder(model, cfg, out_dir)
    card = model_card(cfg).replace("- training data: `builtin:shapes` (language en)\n", "")
    card += (f"\n## Imported from\n\n- the transformers {kind} folder `{folder.resolve()}`; licence and training "
             "data are those of that checkpoint (see its own model card)\n")
    atomic_write_text(out_dir / "README.md", card)
