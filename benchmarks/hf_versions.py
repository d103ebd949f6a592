"""Do exported folders load in another transformers release, with the same embeddings?

Step 1 (this venv, transformers 5.x): export a tiny trained CLIP-style model and an untrained LiT
model (ViT + MiniLM), and record visembed's embeddings beside them:

    python benchmarks/hf_versions.py make /tmp/hfv

Step 2 (any venv with torch and the transformers to check; e.g. 4.57.6 installed beside this
venv's torch: `pip install --target /tmp/t4 --no-deps transformers==4.57.6 tokenizers==0.22.1
huggingface_hub==0.36.0`, then `PYTHONPATH=/tmp/t4:. python benchmarks/hf_versions.py check /tmp/hfv`):
loads both folders with that release's CLIPModel / VisionTextDualEncoderModel and AutoProcessor and
prints the largest difference from the recorded embeddings. Measured: 0.0 (CLIP text and image) and
1.2e-7 / 0.0 (VisionTextDualEncoder text / image) with 4.57.6 and 5.24.0.

`make --smoke` trains 2 steps instead of 20 (CI runs `make --smoke` then `check` in this venv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TEXTS = ["a cat", "a small red circle left of a blue square", "A DOG, with a tail that goes on and on and on and on"]


def images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (40, 64), (64, 40), (120, 90)]]


def make(work: Path, steps: int = 20) -> None:
    import torch

    import visembed
    from visembed.checkpoint import save_model_folder
    from visembed.config import apply_overrides, load_preset
    from visembed.interop.hf_export import export_hf
    from visembed.models import build_model
    from visembed.train.loop import train

    work.mkdir(parents=True, exist_ok=True)
    train(apply_overrides(load_preset("tiny"), [f"train.steps={steps}"]), work / "run", progress=False)
    cfg = apply_overrides(load_preset("tiny"), ["model.text.kind=hf", "model.text.hf_path=minilm"])
    torch.manual_seed(0)
    save_model_folder(build_model(cfg.model), cfg, work / "lit")
    for name in ("run", "lit"):
        export_hf(work / name, work / f"{name}-hf")
        model = visembed.load(work / name, device="cpu")
        np.save(work / f"{name}-text.npy", model.encode_text(TEXTS))
        np.save(work / f"{name}-image.npy", model.encode_image(images()))
    print(f"exported to {work}/run-hf and {work}/lit-hf")


def check(work: Path) -> None:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoProcessor, CLIPModel, VisionTextDualEncoderModel

    def pooled(x):
        return F.normalize(getattr(x, "pooler_output", x), dim=-1).numpy()

    rows = []
    with torch.no_grad():
        folder = work / "run-hf"
        model, processor = CLIPModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
        t = processor(text=TEXTS, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                      truncation=True, return_tensors="pt")
        text = pooled(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))
        image = pooled(model.get_image_features(pixel_values=processor(images=images(), return_tensors="pt")["pixel_values"]))
        rows.append(("CLIPModel", text, image, "run"))
        folder = work / "lit-hf"
        model, processor = VisionTextDualEncoderModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
        t = processor(text=TEXTS, return_tensors="pt", padding=True)
        hidden = model.text_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
        mask = t["attention_mask"].unsqueeze(-1).float()
        text = F.normalize(model.text_projection((hidden * mask).sum(1) / mask.sum(1)), dim=-1).numpy()
        image = pooled(model.get_image_features(pixel_values=processor(images=images(), return_tensors="pt")["pixel_values"]))
        rows.append(("VisionTextDualEncoderModel", text, image, "lit"))
    print(f"transformers {transformers.__version__}")
    print("| folder | text max abs diff | image max abs diff |\n| --- | --- | --- |")
    for name, text, image, stem in rows:
        dt = np.abs(text - np.load(work / f"{stem}-text.npy")).max()
        di = np.abs(image - np.load(work / f"{stem}-image.npy")).max()
        print(f"| {name} | {dt:.2e} | {di:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["make", "check"], help="make: export and record (this venv); check: compare")
    parser.add_argument("work", type=Path, help="the folder make writes and check reads")
    parser.add_argument("--smoke", action="store_true", help="make: train 2 steps instead of 20")
    args = parser.parse_args()
    if args.step == "make":
        make(args.work, steps=2 if args.smoke else 20)
    else:
        check(args.work)


if __name__ == "__main__":
    main()
