"""A transformers `CLIPModel` folder -> a visembed model folder (ViT + BPE text transformer).

Our towers are transformers' CLIP under other module names (pre-LN blocks, class token,
`pre_layrnorm`, `post_layernorm`, EOS pooling, bias-free projections, `logit_scale` as a log), so the
weights are renamed, never changed: `HF_PREFIXES` is the one table of names, used both ways (the
export in `visembed.export.hf` reads it too). The tokenizer comes along as the folder's own
`tokenizer.json` (through transformers, so a folder with only `vocab.json` + `merges.txt` works),
used as it is: its post-processor adds `<|startoftext|>`/`<|endoftext|>` exactly as
`CLIPTokenizerFast` does. Preprocessing (size, mean, std) comes from the folder's image-processor
config.

Loading is strict: a weight the source lacks, or one it has that our model has no place for, fails
with its name. SigLIP folders fail with a clear error: SigLIP's towers have no class token, an
attention-pooling head and last-token text pooling, none of which our towers have.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from visembed.atomic import atomic_write_text
from visembed.checkpoint import ModelFolderError, save_model_folder
from visembed.config import RunConfig, from_dict, to_dict
from visembed.models.card import model_card

# (transformers CLIPModel prefix, visembed DualEncoder prefix); the first match wins
HF_PREFIXES = (
    ("text_model.embeddings.", "text."),
    ("text_model.", "text."),
    ("vision_model.embeddings.", "vision."),
    ("vision_model.", "vision."),
    ("visual_projection.", "visual_projection."),
    ("text_projection.", "text_projection."),
    ("logit_scale", "logit_scale"),
)
# buffers that transformers 4.x wrote into checkpoints and later stopped saving: no weights
IGNORED_HF_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}  # transformers' hidden_act -> ours
LAYER_NORM_EPS = 1e-5  # torch's default, the one our towers use
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def from_hf_name(name: str) -> str | None:
    """A transformers CLIPModel weight name -> ours (None: no place for it)."""
    for theirs, ours in HF_PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def to_hf_name(name: str) -> str | None:
    """Our weight name -> transformers CLIPModel's (None: no place for it)."""
    embeddings = ("token_embedding.", "position_embedding.", "class_embedding", "patch_embedding.")
    for theirs, ours in HF_PREFIXES:
        if name.startswith(ours):
            rest = name[len(ours):]
            if theirs.endswith("embeddings.") != rest.startswith(embeddings):
                continue
            return theirs + rest
    return None


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


def _check_supported(hf: dict, folder: Path) -> None:
    kind = hf.get("model_type")
    if kind == "siglip" or kind == "siglip2":
        raise ModelFolderError(
            f"{folder} is a SigLIP model ({kind}); visembed imports CLIP models only: SigLIP's towers have no class "
            "token, an attention-pooling image head and last-token text pooling with a head, which visembed's ViT "
            "and text transformer do not have")
    if kind != "clip":
        raise ModelFolderError(f"{folder} holds a transformers {kind!r} model; hf: imports CLIPModel folders "
                               "(model_type 'clip')")


def _tower_fields(tc: dict, which: str, folder: Path) -> dict:
    """Sizes shared by both towers, checked against what our blocks can express."""
    act = tc.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise ModelFolderError(f"{folder}: {which}_config.hidden_act {act!r} is not supported (gelu, quick_gelu)")
    eps = float(tc.get("layer_norm_eps", LAYER_NORM_EPS))
    if abs(eps - LAYER_NORM_EPS) > 1e-12:
        raise ModelFolderError(f"{folder}: {which}_config.layer_norm_eps {eps} is not supported (visembed's towers "
                               f"use {LAYER_NORM_EPS})")
    width, hidden = int(tc["hidden_size"]), int(tc["intermediate_size"])
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ModelFolderError(f"{folder}: {which}_config.intermediate_size {hidden} is not expressible as "
                               f"hidden_size x mlp_ratio")
    return {"width": width, "depth": int(tc["num_hidden_layers"]), "heads": int(tc["num_attention_heads"]),
            "mlp_ratio": ratio, "activation": ACTIVATIONS[act]}


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


def hf_run_config(folder: Path) -> RunConfig:
    """The visembed config of a transformers CLIPModel folder."""
    hf = read_hf_config(folder)
    _check_supported(hf, folder)
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


def map_hf_state(hf_state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Rename transformers' weights to ours; strict: every expected weight present, nothing left over,
    shapes equal. The error names the weights."""
    state, unexpected = {}, []
    for name, tensor in hf_state.items():
        if name in IGNORED_HF_KEYS:
            continue
        ours = from_hf_name(name)
        if ours is None or ours not in expected:
            unexpected.append(name)
            continue
        state[ours] = tensor
    missing = [to_hf_name(name) or name for name in expected if name not in state]
    if missing or unexpected:
        raise ModelFolderError(f"weights in {source} do not fit a CLIPModel of its config (missing: {missing[:5]}, "
                               f"unexpected: {unexpected[:5]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelFolderError(f"weight {to_hf_name(name)} in {source} has shape {tuple(tensor.shape)}, "
                                   f"the config makes it {tuple(expected[name].shape)}")
    return state


def save_hf_tokenizer(folder: Path, out_dir: Path) -> None:
    """The folder's tokenizer as one `tokenizer.json` (transformers builds it from vocab/merges if needed)."""
    from transformers import AutoTokenizer

    from visembed.models.bpe_tokenizer import BPETokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # transformers raises many kinds for a folder without tokenizer files
        raise ModelFolderError(f"{folder}: no usable tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelFolderError(f"{folder}: the tokenizer has no fast (tokenizers) form to import")
    BPETokenizer(backend).save(out_dir)  # checks that it adds one begin and one end token


def convert_hf(folder: str | Path, out_dir: str | Path) -> None:
    """Write the visembed model folder of the transformers CLIPModel folder `folder` into `out_dir`."""
    from visembed.models import build_model

    folder, out_dir = Path(folder), Path(out_dir)
    cfg = hf_run_config(folder)
    hf_state = read_hf_weights(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer(folder, out_dir)
    model = build_model(cfg.model, tokenizer_dir=out_dir, pretrained=False)
    model.load_state_dict(map_hf_state(hf_state, model.state_dict(), folder), strict=True)
    save_model_folder(model, cfg, out_dir)
    card = model_card(cfg).replace("- training data: `builtin:shapes` (language en)\n", "")
    card += (f"\n## Imported from\n\n- the transformers CLIPModel folder `{folder.resolve()}`; licence and training "
             "data are those of that checkpoint (see its own model card)\n")
    atomic_write_text(out_dir / "README.md", card)
