"""Contrastive losses: CLIP (symmetric softmax InfoNCE) and SigLIP (pairwise sigmoid), and the
optional caption-bank term (each image against every training caption, see
`visembed.train.caption_bank`).

All see the whole global batch: features are gathered from every rank with gradients, and every
rank computes the same full-batch loss (see `visembed.distributed.gather_with_grad` for why the
gradients then come out exactly as in one process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visembed.distributed import gather_with_grad

LOSS_KINDS = ("clip", "siglip")


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; pair i matches pair i."""
    logits = logit_scale * image @ text.T  # (N, N): row i = image i against every text
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """Every (image, text) pair is its own binary problem; summed over pairs, divided by N (SigLIP)."""
    logits = logit_scale * image @ text.T + logit_bias  # (N, N)
    signs = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1  # +1 diagonal, -1 elsewhere
    return -F.logsigmoid(signs * logits).sum() / len(logits)


def caption_bank_loss(image: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Image i must pick its caption `labels[i]` among all K captions of the bank (softmax), whatever
    the batch loss; an image whose caption is not in the bank (label -1) adds nothing but still
    counts in the mean over images."""
    logits = logit_scale * image @ bank.T  # (N, K)
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / len(image)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class ContrastiveLoss(nn.Module):
    """`loss(image_features, text_features, logit_scale, logit_bias) -> {"contrastive_loss": t}`.

    Features (n_local, D) are already L2-normalised and `logit_scale` is already exp'd. With
    `bank_weight` > 0, `bank` (K, D) and `bank_labels` (n_local,) add `bank_weight` times the
    caption-bank term.
    """

    def __init__(self, kind: str = "clip", rank: int = 0, world_size: int = 1, bank_weight: float = 0.0):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown contrastive loss {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
        self.kind, self.rank, self.world_size, self.bank_weight = kind, rank, world_size, bank_weight

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        bank: torch.Tensor | None = None,
        bank_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.kind == "siglip" and logit_bias is None:
            raise ValueError("the siglip loss needs a logit_bias (set model.loss='siglip' when building the model)")
        # fp32 logits even under bf16 autocast: softmax over a large batch is sensitive to rounding
        with torch.autocast(image_features.device.type, enabled=False):
            image, text = _at_least_fp32(image_features), _at_least_fp32(text_features)
            if self.world_size > 1:
                image, text = gather_with_grad(image), gather_with_grad(text)  # (N_global, D)
            scale = _at_least_fp32(logit_scale)
            if self.kind == "clip":
                loss = clip_loss(image, text, scale)
            else:
                loss = siglip_loss(image, text, scale, _at_least_fp32(logit_bias))
            if bank is not None:
                labels = gather_with_grad(bank_labels) if self.world_size > 1 else bank_labels
                loss = loss + self.bank_weight * caption_bank_loss(image, _at_least_fp32(bank), labels, scale)
        return {"contrastive_loss": loss}


# ---- image-only objectives (SimCLR, SLIP's image branch) ------------------------------------


def nt_xent_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: `a[i]` and `b[i]` (L2-normalised, (N, D) each) are two views of image i;
    each of the 2N views must pick its partner among the other 2N - 1 (itself left out). Mean over
    the 2N views."""
    n = len(a)
    z = torch.cat([a, b])  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # view i <-> view i +- N
    return F.cross_entropy(logits, partner)


class NTXentLoss(nn.Module):
    """`loss(view_a, view_b) -> {"simclr_loss": t}`: NT-Xent over the global batch. The views
    (n_local, D), already L2-normalised, are gathered from every rank with gradients, so each
    image's negatives are every other view of the global batch, as in `ContrastiveLoss`."""

    def __init__(self, temperature: float = 0.1, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"the NT-Xent temperature must be more than 0, got {temperature}")
        self.temperature, self.rank, self.world_size = temperature, rank, world_size

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(view_a.device.type, enabled=False):  # fp32, as the contrastive losses
            a, b = _at_least_fp32(view_a), _at_least_fp32(view_b)
            if self.world_size > 1:
                a, b = gather_with_grad(a), gather_with_grad(b)  # (N_global, D)
            return {"simclr_loss": nt_xent_loss(a, b, self.temperature)}
