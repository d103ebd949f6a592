"""The `slip` task: CLIP and SimCLR on one image tower (Mu et al. 2021, "SLIP"). Each image-caption
pair gives the CLIP loss as the contrastive task does; two more views of the image give
`train.slip.simclr_weight` times NT-Xent through a projection MLP (temperature 0.1, 256-d, reading
the tower's pooled features beside the CLIP head, as the paper) that is dropped after training.

Views: "pixels" (the loop's `data.augment` draw) is the CLIP view; the SimCLR views are
`train.slip.views` drawn over "pixels" and "pixels_2". Three image passes per step against CLIP's
one: compare at equal steps and say the wall time too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import ConfigError, RunConfig, SLIPTaskConfig
from visembed.losses import NTXentLoss
from visembed.train.batch import Autocast, MicroBatch, Needs
from visembed.train.tasks.contrastive import ContrastiveTask
from visembed.train.tasks.simclr import ViewDrawer, build_ssl_model, spliced_backward, view_pairs


class SLIPTask(ContrastiveTask):
    needs = Needs(sample="caption", views=2)

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        if cfg.train.contrastive.caption_bank_weight > 0:
            raise ConfigError("train.contrastive.caption_bank_weight: must be 0 for train.task=slip")
        super().__init__(cfg, rank, world)
        self.settings: SLIPTaskConfig = cfg.train.slip
        self.ntxent = NTXentLoss(self.settings.temperature, rank=rank, world_size=world)
        self.views = ViewDrawer(self.settings)

    def build_model(self, cfg: RunConfig, assets: Path, pretrained: bool) -> nn.Module:
        model = build_ssl_model(cfg, assets, pretrained)
        self.text_tokens = model.text_tokens
        return model

    def configure(self, model: nn.Module) -> None:
        model.attach_head(self.settings)
        model.vision.with_feature_cache(0)  # the SimCLR views are new images every step

    def finalize(self, model: nn.Module) -> None:
        model.detach_head()

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]:
        calls = [((micro["pixels"],), {**micro["tokens"], "views": self.views.draw(micro)}) for micro in micro_batches]
        weight = self.settings.simclr_weight

        def loss_of(outputs, once):
            image = torch.cat([out["image_features"] for out in outputs])  # (N, D)
            text = torch.cat([out["text_features"] for out in outputs])
            # the temperature (and SigLIP's bias) enters every pass: one of them carries its gradient
            scale, bias = outputs[-1]["logit_scale"], outputs[-1]["logit_bias"]
            if not once:
                scale, bias = scale.detach(), (bias.detach() if bias is not None else None)
            clip = self.loss_fn(image, text, scale, bias)["contrastive_loss"]
            a, b = view_pairs(outputs)
            simclr = self.ntxent(a, b)["simclr_loss"]
            return clip + weight * simclr, {"clip_loss": clip.item(), "simclr_loss": simclr.item(),
                                            "logit_scale": scale.item()}

        return spliced_backward(model, calls, loss_of, autocast)
