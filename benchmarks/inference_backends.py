"""Inference backends on the CPU: `visembed.load(..., backend="torch" | "onnx")` and int8 ONNX
graphs, on the same model folders, in one process: images/s and texts/s (best of interleaved
rounds: on a shared machine the slower rounds measure the neighbours) and text->image recall@10
on the emoji test split (what int8 costs in quality), and each backend's vectors against torch's
(the least cosine over the images and over the texts). Ratios, not thresholds.

    .venv/bin/python benchmarks/inference_backends.py --models runs/demo runs/vit   # trained folders
    .venv/bin/python benchmarks/inference_backends.py                # untrained demo-kind and ViT folders:
                                                                     # speed only (recall is noise)
    .venv/bin/python benchmarks/inference_backends.py --smoke        # a tiny ViT, 8 images: does it run (CI)

Every backend embeds the same images (decoded and resized once per round, inside the timing, as
`index build` does) and the same captions; the ONNX graphs are exported and cached before timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import visembed
except ImportError:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import visembed

from markdown_table import print_table

BACKENDS = {"torch": {}, "onnx": {"backend": "onnx"}, "onnx int8": {"backend": "onnx", "quantize": "int8"}}


def untrained_folder(preset: str, out: Path, overrides: list[str]) -> Path:
    """A model folder of `preset`'s kind with fresh weights (ImageNet / MiniLM where the preset has them)."""
    from visembed.checkpoint import save_model_folder
    from visembed.config import apply_overrides, load_preset
    from visembed.models import build_model
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    cfg = apply_overrides(load_preset(preset), overrides)
    out.mkdir(parents=True)
    if cfg.model.text.kind == "transformer":
        train_bpe_tokenizer(["a photo of a cat", "a red circle", "a dog on grass"] * 20, cfg.model.text.vocab_size, out)
    torch.manual_seed(0)
    save_model_folder(build_model(cfg.model, tokenizer_dir=out, pretrained=True), cfg, out)
    return out


def recall_at_10(image_vectors: np.ndarray, text_vectors: np.ndarray) -> float:
    """Text i's own image among the 10 nearest images (one caption per image, same order)."""
    scores = text_vectors @ image_vectors.T
    top = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def measure(folder: Path, images: list, captions: list[str], rounds: int) -> list[dict]:
    models = {name: visembed.load(folder, **options) for name, options in BACKENDS.items()}
    best = {name: [float("inf"), float("inf")] for name in models}
    vectors = {}
    for round_ in range(rounds):
        # trailing spaces: the same tokens, but texts the frozen MiniLM's per-text cache has not seen
        texts = [caption + " " * round_ for caption in captions]
        for name, model in models.items():  # interleaved: a busy neighbour slows every row alike
            start = time.perf_counter()
            image_vectors = model.encode_image(images, batch_size=32)
            middle = time.perf_counter()
            text_vectors = model.encode_text(texts)
            end = time.perf_counter()
            best[name] = [min(best[name][0], middle - start), min(best[name][1], end - middle)]
            vectors[name] = (image_vectors, text_vectors)
    base_images, base_texts = len(images) / best["torch"][0], len(captions) / best["torch"][1]
    base_recall = recall_at_10(*vectors["torch"])
    rows = []
    for name in models:
        image_rate, text_rate = len(images) / best[name][0], len(captions) / best[name][1]
        recall = recall_at_10(*vectors[name])
        rows.append({"model": folder.name, "backend": name, "images/s": image_rate, "x torch (images)": image_rate / base_images,
                     "texts/s": text_rate, "x torch (texts)": text_rate / base_texts, "R@10": recall,
                     "R@10 - torch": recall - base_recall,
                     "max |v - torch|": float(np.abs(vectors[name][0] - vectors["torch"][0]).max()),
                     "min cos to torch (images / texts)": " / ".join(
                         f"{float((vectors[name][i] * vectors['torch'][i]).sum(1).min()):.4f}" for i in (0, 1))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path, help="model folders (default: untrained demo-kind and ViT)")
    parser.add_argument("--images", type=int, default=256, help="emoji test images embedded per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny ViT, 8 shapes images, one round: does it run")
    args = parser.parse_args()
    from visembed.data import open_dataset

    work = Path(tempfile.mkdtemp(prefix="inference_backends_"))
    if args.smoke:
        folders = [untrained_folder("tiny", work / "tiny-vit", [])]
        samples = list(open_dataset("builtin:shapes?n=64", "test"))[:8]
        args.rounds = 1
    else:
        folders = args.models or [
            untrained_folder("demo", work / "demo-kind", ["model.text.cjk_student.enabled=false"]),
            untrained_folder("vit-b16", work / "vit-b16-kind", ["model.vision.image_size=96", "model.text.vocab_size=512"]),
        ]
        samples = list(open_dataset("builtin:emoji", "test"))[: args.images]
    images, captions = [s.image for s in samples], [s.caption for s in samples]
    for folder in folders:  # export and quantise before timing (cached per weights)
        for options in BACKENDS.values():
            visembed.load(folder, **options)
    rows = [row for folder in folders for row in measure(folder, images, captions, args.rounds)]
    print(f"\n{len(images)} images, {len(captions)} captions, best of {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads (onnxruntime gets as many)")
    print_table(rows, ["model", "backend", "images/s", "x torch (images)", "texts/s", "x torch (texts)", "R@10",
                       "R@10 - torch", "max |v - torch|", "min cos to torch (images / texts)"])


if __name__ == "__main__":
    main()
