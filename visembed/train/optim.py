"""AdamW with weight decay on weight matrices only, as CLIP/OpenCLIP train.

Biases, norm gains, the class token and the temperature (`logit_scale`, `logit_bias`) are vectors
or scalars: decaying them towards zero only hurts. Frozen parameters are left out entirely.
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[int, float]:
    """Layer-wise learning-rate decay: parameter id -> lr multiplier. An image tower that lists its
    `layer_groups()` (input side first) gets `layer_decay ** k` in the group k + 1 places from the
    top, so pretrained early layers move least; everything else keeps the full rate."""
    tower = getattr(model, "vision", None)
    if layer_decay == 1.0 or not hasattr(tower, "layer_groups"):
        return {}
    groups = tower.layer_groups()
    return {id(p): layer_decay ** (len(groups) - i) for i, group in enumerate(groups) for p in group.parameters()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: matrices (decayed) and everything else (not decayed), each split by learning
    rate multiplier (`lr_scale`) where layer-wise decay is on."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    scales = _layer_scales(model, layer_decay)
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or name in skip or name.endswith(("logit_scale", "logit_bias")))
        groups.setdefault((decayed, scales.get(id(p), 1.0)), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
            for (decayed, scale), params in groups.items() if params or scale == 1.0]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> torch.optim.AdamW:
    """AdamW with CLIP's betas and eps (beta2 0.98 is steadier with large contrastive batches).

    Build it after moving the model to its device: the fused kernel (one pass over all tensors,
    ~3x faster than the default per-tensor loop on CPU) is used where the device has one.
    """
    groups = param_groups(model, weight_decay, layer_decay)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)
