"""Training throughput (samples/s for forward + backward + AdamW) of the reference tiny CLIP.

    .venv/bin/python benchmarks/train_throughput.py [--batch-size 128] [--steps 8] [--warmup 2]
    .venv/bin/python benchmarks/train_throughput.py --smoke    # batch 4, one step: does it run (CI)

The reference config (DESIGN.md): ViT patch 8, width 192, 4 layers, 3 heads at 64x64; text
transformer width 192, 4 layers, context 32, vocabulary 4096; batch 128; embed 256. Every row is
measured in this process, on this machine, interleaved step by step:

- visembed's step (what the training loop runs: the task's backward, text tokenisation included,
  gradient clipping, fused AdamW);
- a plain torch.nn version of the same architecture (nn.TransformerEncoderLayer, pre-tokenised
  ids, torch.optim.AdamW with its defaults);
- OpenCLIP's `CLIP` with the same config, its `ClipLoss`, AdamW with OpenCLIP's parameter groups
  (no decay on gains, biases, logit scale), once with the default AdamW and once fused, when
  `open_clip` imports here. Where it does not, its row says "not run" and why: a benchmark compares
  only what it ran.

OpenCLIP needs torchvision, and PyPI's torchvision does not import beside the CPU torch wheel this
project installs (`operator torchvision::nms does not exist`). It does in a separate venv, with
the CUDA build of torch (~6 GB download; it runs on CPU):

    python -m venv /tmp/oc && /tmp/oc/bin/pip install torch==2.14.1 torchvision open_clip_torch
    /tmp/oc/bin/pip install -e .
    /tmp/oc/bin/python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import load_preset
from visembed.losses import clip_loss
from visembed.data import Sample
from visembed.models.bpe_tokenizer import train_bpe_tokenizer
from visembed.train.optim import build_optimizer
from visembed.train.tasks import build_task

WORDS = "red green blue yellow small large circle square triangle star left right above below of a the and".split()


class ReferenceTower(nn.Module):
    """Pre-LN transformer from torch.nn building blocks."""

    def __init__(self, width: int, depth: int, heads: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)


class ReferenceCLIP(nn.Module):
    def __init__(self, image_size=64, patch=8, width=192, depth=4, heads=3, vocab=4096, context=32, embed=256):
        super().__init__()
        n_patches = (image_size // patch) ** 2
        self.patch = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.cls = nn.Parameter(torch.randn(width) * width**-0.5)
        self.vis_pos = nn.Parameter(torch.randn(n_patches + 1, width) * 0.02)
        self.vis_pre = nn.LayerNorm(width)
        self.vision = ReferenceTower(width, depth, heads)
        self.tok = nn.Embedding(vocab, width)
        self.txt_pos = nn.Parameter(torch.randn(context, width) * 0.01)
        self.text = ReferenceTower(width, depth, heads)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)
        self.vis_proj = nn.Linear(width, embed, bias=False)
        self.txt_proj = nn.Linear(width, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def forward(self, pixels, ids, eos):  # (B, 3, S, S), (B, T), (B,)
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (B, patches, width)
        x = torch.cat([self.cls.expand(len(x), 1, -1), x], dim=1) + self.vis_pos
        x = self.vision.norm(self.vision.encoder(self.vis_pre(x))[:, 0])
        t = self.tok(ids) + self.txt_pos  # (B, T, width)
        t = self.text.norm(self.text.encoder(t, mask=self.causal, is_causal=True))
        t = t[torch.arange(len(t)), eos]
        return F.normalize(self.vis_proj(x), dim=-1), F.normalize(self.txt_proj(t), dim=-1), self.logit_scale.exp()


def _captions(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def visembed_step(batch: int):
    """The training loop's step on the reference config (its task's backward, then clipping and
    AdamW as the loop does them); returns a closure that runs one step."""
    cfg = load_preset("clip-tiny")
    rng = random.Random(0)
    task = build_task(cfg, 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(_captions(2000, rng), cfg.model.text.vocab_size, tmp)
        model = task.build_model(cfg, Path(tmp), pretrained=True).train()
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    pixels = torch.rand(batch, 3, 64, 64)
    samples = [Sample(id=str(i), image=b"", caption=text) for i, text in enumerate(_captions(batch, rng))]

    def step():
        opt.zero_grad(set_to_none=True)
        task.backward(model, [{"pixels": pixels, **task.fields(samples)}], contextlib.nullcontext)  # (the loader's
        # tokenisation counted in the step, as before it moved to the loader)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    return step


def reference_step(batch: int):
    model = ReferenceCLIP().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    pixels = torch.rand(batch, 3, 64, 64)
    ids = torch.randint(0, 4096, (batch, 32))
    eos = torch.randint(4, 32, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        image, text, scale = model(pixels, ids, eos)
        clip_loss(image, text, scale).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def openclip_steps(batch: int) -> tuple[dict, str | None]:
    """({row name: step}, None) with OpenCLIP's model and loss on the reference config, or
    ({}, why not) when open_clip does not import here."""
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision's operator registration failing
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:90]
        return {}, f"not run (open_clip does not import here: {reason})"
    version = getattr(open_clip, "__version__", "?")
    vision = {"image_size": 64, "patch_size": 8, "width": 192, "layers": 4, "head_width": 64}  # 3 heads
    text = {"context_length": 32, "vocab_size": 4096, "width": 192, "heads": 3, "layers": 4}
    pixels = torch.rand(batch, 3, 64, 64)
    ids = torch.randint(1, 4096, (batch, 32))

    def step_with(fused: bool):
        model = open_clip.CLIP(embed_dim=256, vision_cfg=vision, text_cfg=text).train()
        loss_fn = open_clip.ClipLoss()
        # OpenCLIP's training script: no weight decay on gains, biases and the logit scale
        exclude = [p for n, p in model.named_parameters() if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n
                   or "logit_scale" in n]
        rest = [p for p in model.parameters() if all(p is not q for q in exclude)]
        opt = torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.1}],
                                lr=1e-4, fused=fused or None)

        def step():
            opt.zero_grad(set_to_none=True)
            out = model(pixels, ids)
            if isinstance(out, dict):
                image, text_features, scale = out["image_features"], out["text_features"], out["logit_scale"]
            else:
                image, text_features, scale = out[:3]
            loss_fn(image, text_features, scale).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        return step

    return {f"OpenCLIP {version} (default AdamW)": step_with(False),
            f"OpenCLIP {version} (fused AdamW)": step_with(True)}, None


def time_interleaved(steps: dict, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step; implementations alternate step by step, so load from other
    processes on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="batch 4, one step after one warm-up: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.steps, args.warmup = 4, 1, 1
    torch.manual_seed(0)
    steps = {
        "visembed (fused AdamW)": visembed_step(args.batch_size),
        "plain torch.nn reference (default AdamW)": reference_step(args.batch_size),
    }
    openclip, not_run = openclip_steps(args.batch_size)
    rows = time_interleaved({**steps, **openclip}, args.steps, args.warmup)
    print(f"tiny CLIP, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up, all rows in this process")
    print(f"| {'implementation':<50} | {'s/step':>7} | {'samples/s':>9} |")
    print(f"|{'-' * 52}|{'-' * 9}|{'-' * 11}|")
    for name, seconds in rows.items():
        print(f"| {name:<50} | {seconds:7.3f} | {args.batch_size / seconds:9.1f} |")
    if not_run:
        print(f"| {'OpenCLIP: ' + not_run:<50} | {'-':>7} | {'-':>9} |")


if __name__ == "__main__":
    main()
