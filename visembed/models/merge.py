"""WiSE-FT (Wortsman et al. 2022): interpolate the weights of two models of one architecture,
typically a pretrained model A and B fine-tuned from it: `(1 - alpha) * A + alpha * B`.

The two folders must agree on everything that shapes the model (the config's `model` section and
the tokenizer assets), else the error names the first difference. `torch.lerp` makes the ends
exact: alpha = 0 gives A's weights bit for bit, alpha = 1 gives B's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visembed.atomic import atomic_write_text, new_dir
from visembed.checkpoint import build_fitting, read_config, read_tensors, save_model_folder, weights_path
from visembed.config import to_dict


class MergeError(ValueError):
    """Two models that cannot be interpolated."""


def first_difference(a, b, prefix: str = "model") -> str | None:
    """The dotted name of the first field where two config dicts differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{prefix} is {a!r} in A but {b!r} in B"


def _asset_files(folder: Path) -> dict[str, bytes]:
    """Tokenizer files, the hf tower's config and a captioner's LM (`lm/`: its tokenizer and config):
    what must be equal for the weights to mean the same."""
    files = {}
    for path in sorted([folder / "tokenizer.json", *(folder / "text_encoder").glob("*"), *(folder / "lm").glob("*")]):
        if path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def interpolate(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))
        raise MergeError(f"the models' weights differ in names: {only[:5]}")
    merged = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.shape != b.shape:
            raise MergeError(f"weight {name} has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B")
        if a.is_floating_point():
            merged[name] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype)
        elif torch.equal(a, b):
            merged[name] = a
        else:
            raise MergeError(f"weight {name} is not a float tensor and differs between A and B")
    return merged


def merge_models(a: str | Path, b: str | Path, alpha: float, out: str | Path) -> Path:
    """Write the model `(1 - alpha) * A + alpha * B` to the new (or empty) folder `out`."""
    from visembed.models import build_model
    from visembed.models.card import model_card

    a, b, out = Path(a), Path(b), Path(out)
    if not 0.0 <= alpha <= 1.0:  # (NaN too)
        raise MergeError(f"--alpha must be in [0, 1] (0 gives A, 1 gives B), got {alpha}")
    cfg_a, cfg_b = read_config(a), read_config(b)
    difference = first_difference(to_dict(cfg_a.model), to_dict(cfg_b.model))
    if difference:
        raise MergeError(f"{a} and {b} are not the same architecture: {difference}")
    assets_a, assets_b = _asset_files(a), _asset_files(b)
    if assets_a != assets_b:
        names = sorted(k for k in set(assets_a) | set(assets_b) if assets_a.get(k) != assets_b.get(k))
        raise MergeError(f"{a} and {b} have different tokenizer assets ({', '.join(names)}): their token ids mean "
                         "different things")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out} already exists and is not empty; choose a new --out")
    merged = interpolate(read_tensors(weights_path(a)), read_tensors(weights_path(b)), alpha)
    model = build_fitting(lambda: build_model(cfg_a.model, tokenizer_dir=a, pretrained=False), weights_path(a))
    model.load_state_dict(merged, strict=True)
    with new_dir(out) as tmp:
        save_model_folder(model, cfg_b, tmp)  # the config of the fine-tuned run; the model section is A's too
        card = model_card(cfg_b) + (
            f"\n## Merged (WiSE-FT)\n\n- weights: (1 - {alpha:g}) x A + {alpha:g} x B\n"
            f"- A: `{a.resolve()}` (trained on `{cfg_a.data.train}`)\n- B: `{b.resolve()}` (trained on `{cfg_b.data.train}`)\n")
        atomic_write_text(tmp / "README.md", card)
    return out
