"""One optimisation step's forward and backward for the contrastive task (`tasks/contrastive.py`).

Gradient accumulation for a contrastive loss must not shrink the set of negatives: the features of
every micro-batch are computed first without gradients, then each micro-batch is recomputed with
gradients and spliced into that cached set, so each backward pass is the full accumulated batch's
loss seen through one micro-batch (the method of OpenCLIP's `accum_freq`). The sum of those
backward passes is exactly the gradient of the one big batch.

A caption bank (`caption_bank.py`) is projected in every pass; like the temperature, its
projection carries gradient in one pass only, so that it is counted once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from visembed.train.caption_bank import CaptionBank
from visembed.train.batch import Autocast, MicroBatch


def _no_sync(model: nn.Module, sync: bool):
    """DDP all-reduces gradients only on the last micro-batch's backward."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def contrastive_backward(
    model: nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    micro_batches: list[MicroBatch],
    autocast: Autocast = contextlib.nullcontext,
    bank: CaptionBank | None = None,
) -> dict[str, float]:
    """Backpropagate the loss of all micro-batches together; gradients accumulate in `.grad`.
    Each micro-batch holds "pixels" (b, 3, S, S) in [0, 1], "tokens" (`model.text_tokens` of its
    captions) and, with a caption bank, "captions" (their strings: the bank's rows are found by text).

    Returns the loss and the temperature for logging.
    """
    bank_input = {} if bank is None else {"bank": bank.features}
    if len(micro_batches) == 1:
        batch = micro_batches[0]
        with autocast():
            out = model(batch["pixels"], **batch["tokens"], **bank_input)
            bank_args = {} if bank is None else {"bank": out["bank_features"],
                                                 "bank_labels": bank.labels(batch["captions"])}
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"],
                           **bank_args)
            loss = loss["contrastive_loss"]
        loss.backward()
        return {"loss": loss.item(), "logit_scale": out["logit_scale"].item()}

    with torch.no_grad(), autocast():
        cached = [model(batch["pixels"], **batch["tokens"]) for batch in micro_batches]
    images = [c["image_features"] for c in cached]  # each (b_j, D)
    texts = [c["text_features"] for c in cached]
    last = len(micro_batches) - 1
    bank_labels = None if bank is None else bank.labels([t for batch in micro_batches for t in batch["captions"]])
    for j, batch in enumerate(micro_batches):
        with _no_sync(model, sync=j == last), autocast():
            out = model(batch["pixels"], **batch["tokens"], **bank_input)
            image = torch.cat(images[:j] + [out["image_features"]] + images[j + 1 :])  # (B, D)
            text = torch.cat(texts[:j] + [out["text_features"]] + texts[j + 1 :])
            # the temperature (and a caption bank) enters every pass; let only one of them carry its gradient
            scale, bias = out["logit_scale"], out["logit_bias"]
            bank_args = {} if bank is None else {"bank": out["bank_features"], "bank_labels": bank_labels}
            if j != last:
                scale = scale.detach()
                bias = bias.detach() if bias is not None else None
                if bank is not None:
                    bank_args["bank"] = bank_args["bank"].detach()
            loss = loss_fn(image, text, scale, bias, **bank_args)["contrastive_loss"]
        loss.backward()
    return {"loss": loss.item(), "logit_scale": out["logit_scale"].item()}
