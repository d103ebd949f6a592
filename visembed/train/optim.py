"""AdamW with weight decay on weight matrices only, as CLIP/OpenCLIP train.

Biases, norm gains, the class token and the temperature (`logit_scale`, `logit_bias`) are vectors
or scalars: decaying them towards zero only hurts. A model may name more parameters to leave
undecayed (`no_weight_decay()`, the towers' names gathered by the model). Frozen parameters are
left out entirely.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import nn

from visembed.config import ConfigError


class Trainable(Protocol):
    """What the optimiser asks of a model (DualEncoder, Captioner, and whatever a task builds):
    its layer groups (input side first; one group where layer-wise decay means nothing) and the
    names of parameters to keep out of weight decay besides vectors and scalars."""

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def layer_groups(self) -> list[nn.Module]: ...
    def no_weight_decay(self) -> set[str]: ...


def _layer_scales(model: Trainable, layer_decay: float) -> dict[int, float]:
    """Layer-wise learning-rate decay: parameter id -> lr multiplier. The model's `layer_groups()`
    (input side first; a dual encoder's: its image tower's) get `layer_decay ** k` in the group
    k + 1 places from the top, so pretrained early layers move least; everything else keeps the full rate."""
    if layer_decay == 1.0:
        return {}
    groups = model.layer_groups()
    if len(groups) < 2:
        raise ConfigError(f"train.layer_decay: must be 1 for a {type(model).__name__} whose layers form one group "
                          f"(its image tower lists no layer groups: only model.vision.kind=efficientnet_lite does), "
                          f"got {layer_decay!r}")
    return {id(p): layer_decay ** (len(groups) - i) for i, group in enumerate(groups) for p in group.parameters()}


def param_groups(model: Trainable, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: matrices (decayed) and everything else (not decayed), each split by learning
    rate multiplier (`lr_scale`) where layer-wise decay is on."""
    skip = model.no_weight_decay()
    scales = _layer_scales(model, layer_decay)
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or name in skip)
        groups.setdefault((decayed, scales.get(id(p), 1.0)), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
            for (decayed, scale), params in groups.items() if params or scale == 1.0]


def build_optimizer(model: Trainable, lr: float, weight_decay: float, layer_decay: float = 1.0) -> torch.optim.AdamW:
    """AdamW with CLIP's betas and eps (beta2 0.98 is steadier with large contrastive batches).

    Build it after moving the model to its device: the fused kernel (one pass over all tensors,
    ~3x faster than the default per-tensor loop on CPU) is used where the device has one.
    """
    groups = param_groups(model, weight_decay, layer_decay)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)
