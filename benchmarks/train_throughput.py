"""Training throughput (samples/s for forward + backward + AdamW) of the reference tiny CLIP.

    .venv/bin/python benchmarks/train_throughput.py [--batch-size 128] [--steps 6] [--warmup 2]

The reference config (DESIGN.md): ViT patch 8, width 192, 4 layers, 3 heads at 64x64; text
transformer width 192, 4 layers, context 32; batch 128; embed 256. visembed's step (the one the
training loop runs, text tokenisation included) is timed beside a plain torch.nn version of the
same architecture (nn.TransformerEncoderLayer, pre-tokenised ids, torch.optim.AdamW with its
defaults, as OpenCLIP builds it). OpenCLIP cannot be imported
beside the CPU torch wheel, so its figure, measured on this machine class, is printed as a constant.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import load_preset
from visembed.data.tokenizer import train_bpe_tokenizer
from visembed.losses import ContrastiveLoss, clip_loss
from visembed.models import build_model
from visembed.train.optim import build_optimizer
from visembed.train.step import train_step

OPENCLIP_SAMPLES_PER_S = 73.0  # OpenCLIP 3.3, same config and batch, this machine class (DESIGN.md)
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
    """The training loop's step on the reference config; returns a closure that runs one step."""
    cfg = load_preset("clip-tiny")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(_captions(2000, rng), cfg.model.text.vocab_size, tmp)
        model = build_model(cfg.model, tokenizer_dir=tmp).train()
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    loss_fn = ContrastiveLoss("clip")
    pixels, texts = torch.rand(batch, 3, 64, 64), _captions(batch, rng)

    return lambda: train_step(model, loss_fn, opt, [(pixels, texts)], grad_clip=1.0)


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
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = time_interleaved({
        "visembed train_step (fused AdamW)": visembed_step(args.batch_size),
        "plain torch.nn reference (default AdamW)": reference_step(args.batch_size),
    }, args.steps, args.warmup)
    print(f"tiny CLIP, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(f"| {'implementation':<50} | {'s/step':>7} | {'samples/s':>9} |")
    print(f"|{'-' * 52}|{'-' * 9}|{'-' * 11}|")
    for name, seconds in rows.items():
        print(f"| {name:<50} | {seconds:7.3f} | {args.batch_size / seconds:9.1f} |")
    print(f"| {'OpenCLIP 3.3 (published figure, not run here)':<50} | {args.batch_size / OPENCLIP_SAMPLES_PER_S:7.3f} "
          f"| {OPENCLIP_SAMPLES_PER_S:9.1f} |")


if __name__ == "__main__":
    main()
