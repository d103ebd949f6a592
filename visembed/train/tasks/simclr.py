"""The `simclr` task: image-only pretraining (Chen et al. 2020). Two augmented views of each image
are pulled together through a projection MLP, every other view of the global batch pushed away
(NT-Xent, `visembed.losses.NTXentLoss`, negatives gathered across ranks).

The model is a dual encoder like any other, so its folder works wherever one does (`index build`,
`--init` of a CLIP run, ONNX export, `visembed.load`); its text tower is built (a BPE vocabulary is
learnt from whatever captions the data has, none: bytes only) but frozen and untrained, and its
config's `train.task` tells search and eval so (`config.trains_text_tower`).

The projection MLP (`SSLDualEncoder.ssl_head`) is attached in `configure`, after `--init` weights
are loaded and before the optimiser is built, so it trains, is checkpointed (exact resume) and is
dropped by `finalize`: the saved model folder holds the dual encoder's weights alone.

Views: the loop draws each view with `data.augment`; this task then draws `train.simclr.views`
(SimCLR-strength by default) over each, from the step's seeded RNG, so resume stays exact.
`data.augment.enabled=false` leaves SimCLR's pipeline alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import RunConfig, SimCLRTaskConfig
from visembed.data import DataError, build_train_augment
from visembed.losses import NTXentLoss
from visembed.models.dual_encoder import DualEncoder
from visembed.models.towers import build_text, build_vision
from visembed.train.batch import Autocast, MicroBatch, Needs
from visembed.train.tasks.contrastive import ContrastiveTask

EVAL_LIMIT = 1000  # labelled images of each split a periodic probe and kNN read: a trend, not the benchmark


class SSLDualEncoder(DualEncoder):
    """A dual encoder that also maps views through a projection MLP for an image-only loss.

    `forward(pixels)` without text: {"projections": (B, P) L2-normalised} of the pixels;
    `forward(pixels, input_ids, attention_mask, views=V)`: the dual encoder's outputs plus the
    projections of the views V. One forward per micro-batch, so DDP sees one call."""

    def attach_head(self, settings: SimCLRTaskConfig) -> None:
        """The projection MLP (Linear -> ReLU -> Linear, SimCLR's; no BatchNorm, so a step on 2
        processes equals one on 1), reading the embedding or the tower's pooled features."""
        self.head_input = settings.head_input
        width = self.cfg.embed_dim if settings.head_input == "embedding" else self.vision.width
        self.ssl_head = nn.Sequential(nn.Linear(width, settings.projection_hidden), nn.ReLU(),
                                      nn.Linear(settings.projection_hidden, settings.projection_dim))

    def detach_head(self) -> None:
        """Drop the projection MLP: what remains is a plain dual encoder's weights."""
        del self.ssl_head

    def project(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> (B, projection_dim), L2-normalised."""
        pooled = self.vision(self.normalize_pixels(pixels))  # (B, W)
        features = self.visual_projection(pooled) if self.head_input == "embedding" else pooled
        return F.normalize(self.ssl_head(features), dim=-1)

    def forward(self, pixels, input_ids=None, attention_mask=None, bank=None, *, views=None, **text_tokens):
        if input_ids is None:  # image-only: the pixels are the views
            return {"projections": self.project(pixels)}
        out = super().forward(pixels, input_ids, attention_mask, bank, **text_tokens)
        if views is not None:
            out["projections"] = self.project(views)
        return out


def build_ssl_model(cfg: RunConfig, assets: Path, pretrained: bool) -> SSLDualEncoder:
    """The dual encoder `cfg.model` describes (as `models.build_model`), able to project views."""
    return SSLDualEncoder(cfg.model, build_vision(cfg.model, pretrained), build_text(cfg.model, assets))


def no_sync(model: nn.Module, sync: bool):
    """DDP all-reduces gradients only on the last micro-batch's backward."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def spliced_backward(model: nn.Module, calls: list[tuple[tuple, dict]],
                     loss_of: Callable[[list[dict], bool], tuple[torch.Tensor, dict]], autocast: Autocast) -> dict:
    """Backpropagate one loss over all micro-batches with every negative kept (as the contrastive
    step): each micro-batch's outputs are computed without gradients first, then each is recomputed
    with gradients and spliced among the others. `calls[j]` are the model's arguments for
    micro-batch j; `loss_of(outputs, once)` the loss of all outputs, `once` True in the one pass
    where parameters that enter every pass (a temperature) carry their gradient."""
    if len(calls) == 1:
        args, kwargs = calls[0]
        with autocast():
            loss, logs = loss_of([model(*args, **kwargs)], True)
        loss.backward()
        return {"loss": loss.item(), **logs}
    with torch.no_grad(), autocast():
        cached = [model(*args, **kwargs) for args, kwargs in calls]
    last = len(calls) - 1
    for j, (args, kwargs) in enumerate(calls):
        with no_sync(model, sync=j == last), autocast():
            loss, logs = loss_of(cached[:j] + [model(*args, **kwargs)] + cached[j + 1 :], j == last)
        loss.backward()
    return {"loss": loss.item(), **logs}


def view_pairs(outputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views' projections of every micro-batch, in order: (N, P) and (N, P)."""
    halves = [out["projections"].chunk(2) for out in outputs]  # each micro-batch's views stacked a-then-b
    return torch.cat([a for a, _ in halves]), torch.cat([b for _, b in halves])


class ViewDrawer:
    """A task's own views (`views` of its settings) drawn over the loop's, from the step's RNG."""

    def __init__(self, settings: SimCLRTaskConfig):
        self.augment = build_train_augment(settings.views)

    @torch.no_grad()
    def draw(self, micro: MicroBatch, keys: tuple[str, str] = ("pixels", "pixels_2")) -> torch.Tensor:
        """(2b, 3, S, S): view a of every image of the micro-batch, then view b."""
        return self.augment(torch.cat([micro[key] for key in keys]))  # one kornia call for both


class SimCLRTask(ContrastiveTask):
    needs = Needs(sample="nothing", views=2)

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        super().__init__(cfg, rank, world)
        self.settings = cfg.train.simclr
        self.loss_fn = NTXentLoss(self.settings.temperature, rank=rank, world_size=world)
        self.views = ViewDrawer(self.settings)
        self.find_unused_parameters = False  # the text tower is frozen: every parameter that learns is used

    def build_model(self, cfg: RunConfig, assets: Path, pretrained: bool) -> nn.Module:
        model = build_ssl_model(cfg, assets, pretrained)
        self.text_tokens = model.text_tokens
        return model

    def configure(self, model: nn.Module) -> None:
        """The projection MLP joins; the text side takes no part (frozen as it is); views are new
        images every step, so a locked tower's feature cache could never be reused."""
        model.attach_head(self.settings)
        for part in (model.text, model.text_projection):
            part.requires_grad_(False)
        model.logit_scale.requires_grad_(False)
        if model.logit_bias is not None:
            model.logit_bias.requires_grad_(False)
        model.vision.with_feature_cache(0)

    def fields(self, samples: list) -> dict:
        return {}  # nothing of a sample but its pixels

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None:
        pass  # no caption bank, no CJK student to distil

    def finalize(self, model: nn.Module) -> None:
        model.detach_head()

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]:
        calls = [((self.views.draw(micro),), {}) for micro in micro_batches]

        def loss_of(outputs, once):
            a, b = view_pairs(outputs)
            loss = self.loss_fn(a, b)["simclr_loss"]
            return loss, {"view_agreement": (a * b).sum(dim=-1).mean().item()}

        return spliced_backward(model, calls, loss_of, autocast)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Linear-probe and kNN top-1 on labelled validation data (fitted on the train split; no text
        to retrieve); data without labels is reported, never fatal."""
        from visembed.eval.image_only import evaluate_image_only
        from visembed.models.inference import Model

        cfg = self.cfg
        was_training = model.training
        model.eval()
        try:
            result = evaluate_image_only(Model(model, cfg), cfg.data.val or cfg.data.train, "val", limit=EVAL_LIMIT,
                                         progress=False)
        except (DataError, ValueError, FileNotFoundError) as err:  # no (usable, labelled) validation data
            print(f"evaluation skipped: {err}")
            return {}
        finally:
            model.train(was_training)
        return {f"val_{k}": v for k, v in result.items() if k in ("probe_top1", "knn_top1")}
