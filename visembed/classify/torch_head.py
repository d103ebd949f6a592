"""A `Head` as a torch module, and a dual encoder with its head as one network (pixels -> logits):
what the ONNX export traces and what fine-tuning trains end to end."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visembed.classify.features import feature_parts, pixel_features
from visembed.classify.methods import Head


def _buffer(array) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array, np.float32))


class HeadModule(nn.Module):
    """`Head.logits` in torch. `trainable`: the linear part (and zero-shot class vectors) are
    parameters (fine-tuning), else buffers."""

    def __init__(self, head: Head, trainable: bool = False):
        super().__init__()
        self.parts = feature_parts(head.features)
        self.zs_scale, self.alpha, self.beta = float(head.zs_scale), float(head.alpha), float(head.beta)
        self.block_norm = bool(head.block_norm)
        wrap = (lambda t: None if t is None else nn.Parameter(t)) if trainable else (lambda t: t)
        for name in ("zs_weight", "weight", "bias"):
            tensor = wrap(_buffer(getattr(head, name)))
            if isinstance(tensor, nn.Parameter):
                setattr(self, name, tensor)
            else:
                self.register_buffer(name, tensor)
        for name in ("mean", "scale", "keys", "values"):
            self.register_buffer(name, _buffer(getattr(head, name)))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = feats["embedding"]
        logits = 0.0
        if self.zs_weight is not None:
            logits = logits + self.zs_scale * emb @ self.zs_weight.T
        if self.weight is not None:
            x = torch.cat([feats[p] for p in self.parts], dim=1) if len(self.parts) > 1 else feats[self.parts[0]]
            if self.block_norm:  # `methods.normalize_blocks`
                blocks = torch.split(x - self.mean, [feats[p].shape[1] for p in self.parts], dim=1)
                x = torch.cat([F.normalize(b, dim=1, eps=1e-12) for b in blocks], dim=1)
            elif self.mean is not None:
                x = (x - self.mean) / self.scale
            logits = logits + x @ self.weight.T + self.bias
        if self.keys is not None:
            logits = logits + self.alpha * torch.exp(-self.beta * (1.0 - emb @ self.keys.T)) @ self.values
        return logits

    def to_head(self, head: Head) -> Head:
        """`head` with this module's (possibly trained) arrays."""
        for name in ("zs_weight", "weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                setattr(head, name, value.detach().cpu().float().numpy())
        return head


class ClassifierNet(nn.Module):
    """pixels (N, 3, S, S) in [0, 1] -> class logits (N, C): the dual encoder's image side + head."""

    def __init__(self, encoder: nn.Module, head: HeadModule):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(pixel_features(self.encoder, pixels))


class ProbabilityNet(ClassifierNet):
    """pixels -> class probabilities (softmax of the logits): the exported graph."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(pixels), dim=-1)
