"""EfficientNet-Lite tower speed on this machine: images/s at batch 32.

  * forward: eval mode under torch.no_grad (a frozen tower, or embedding a collection);
  * fwd+bwd last 2: train mode with only the last two blocks and the head trainable
    (set_trainable(3)), forward and backward, the cost of a partially fine-tuned tower.

No pretrained weights are needed for timing (they do not change the cost).

    python benchmarks/efficientnet_speed.py
    python benchmarks/efficientnet_speed.py --variant lite1 --sizes 128 240 --repeats 5
    python benchmarks/efficientnet_speed.py --smoke     # 32 px, batch 2, one repeat: does it run (CI)
"""

from __future__ import annotations

import argparse
import time

import torch

from visembed.models.vision_efficientnet import EfficientNetLite


def images_per_second(step, batch: int, repeats: int) -> float:
    """From the fastest of `repeats` steps: on a shared machine the others measure the neighbours."""
    step()  # warm-up: allocator, oneDNN kernels
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - start)
    return batch / fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="32 px, batch 2, one repeat: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.batch, args.repeats = [32], 2, 1

    model = EfficientNetLite(args.variant, pretrained=False)
    print(f"EfficientNet-{args.variant.title()}, batch {args.batch}, {torch.get_num_threads()} threads")
    print("| size | forward img/s | fwd+bwd last 2 img/s |\n| --- | --- | --- |")
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            model(x).square().mean().backward()

        model.set_trainable(len(model.layer_groups())).eval()
        fwd = images_per_second(forward, args.batch, args.repeats)
        model.set_trainable(3).train()
        fwd_bwd = images_per_second(forward_backward, args.batch, args.repeats)
        model.zero_grad(set_to_none=True)
        print(f"| {size} | {fwd:.1f} | {fwd_bwd:.1f} |")


if __name__ == "__main__":
    main()
