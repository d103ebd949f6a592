"""encode_image speed on the CPU for the same ViT weights: visembed vs transformers' CLIPModel (eager
and sdpa attention) vs onnxruntime on visembed's ONNX export. Same batch, same process, rounds
interleaved; each row's figure is its fastest round (on a shared machine the slower ones measure
the neighbours). Ratios, not thresholds.

    .venv/bin/python benchmarks/export_speed.py [--batch 16] [--repeats 3] [--image-size 224]
    .venv/bin/python benchmarks/export_speed.py --smoke   # a 1-layer ViT at 32 px, batch 2: does it run (CI)

The model is ViT-B/16-shaped (width 768, 12 layers, 12 heads, patch 16) with random weights (they
do not change the cost). Every row computes the same thing, L2-normalised image embeddings from
pixels in [0, 1]: visembed's `encode_image` (normalisation inside), the exported
`image_encoder.onnx` (normalisation inside), and `CLIPModel.get_image_features` on pixels
normalised beforehand (that subtraction is timed too). The CLIPModel gets visembed's vision weights
through the small name map below (our layer names are transformers'), and the rows are checked to
agree before anything is timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from visembed.checkpoint import save_model_folder
from visembed.config import apply_overrides, load_preset
from visembed.interop.onnx import IMAGE_GRAPH, export_onnx
from visembed.models import build_model, load_model_folder
from visembed.models.bpe_tokenizer import train_bpe_tokenizer


def clip_model(model, attn: str):
    """A transformers CLIPModel whose vision tower and projection hold `model`'s weights."""
    from transformers import CLIPConfig, CLIPModel

    v = model.cfg.vision
    config = CLIPConfig(
        projection_dim=model.cfg.embed_dim,
        vision_config={"hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.depth,
                       "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size,
                       "hidden_act": "gelu", "layer_norm_eps": 1e-5},
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2},
    )
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    hf = CLIPModel(config).eval()
    state = {}
    for key, value in model.vision.state_dict().items():
        if key.startswith(("patch_embedding", "class_embedding", "position_embedding")):
            state[f"vision_model.embeddings.{key}"] = value
        else:  # pre_layrnorm, encoder.layers.N..., post_layernorm: the same names
            state[f"vision_model.{key}"] = value
    state["visual_projection.weight"] = model.visual_projection.weight
    missing, unexpected = hf.load_state_dict(state, strict=False)
    vision_missing = [k for k in missing if k.startswith(("vision_model", "visual_projection"))
                      and not k.endswith("position_ids")]
    if vision_missing or unexpected:
        raise RuntimeError(f"weight copy incomplete: missing {vision_missing[:3]}, unexpected {unexpected[:3]}")
    return hf


def features(output) -> torch.Tensor:
    """get_image_features returns a tensor (transformers 4.x) or an output with pooler_output (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--smoke", action="store_true", help="a 1-layer, 64-wide ViT at 32 px, batch 2, one round: "
                                                             "does it run")
    args = parser.parse_args()
    smaller = []
    if args.smoke:
        args.batch, args.repeats, args.image_size = 2, 1, 32
        smaller = ["model.vision.width=64", "model.vision.depth=1", "model.vision.heads=2", "model.embed_dim=32"]
    import onnxruntime
    import transformers

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="export_speed_"))
    cfg = apply_overrides(load_preset("vit-b16"), [f"model.vision.image_size={args.image_size}", "model.text.vocab_size=512",
                                                   "model.text.depth=1", "model.text.width=64", "model.text.heads=2"]
                        + smaller)
    folder = work / "model"
    folder.mkdir()
    train_bpe_tokenizer(["a photo of a cat", "a dog"] * 10, cfg.model.text.vocab_size, folder)
    save_model_folder(build_model(cfg.model, tokenizer_dir=folder, pretrained=False), cfg, folder)
    model, _ = load_model_folder(folder, "cpu")
    export_onnx(folder, work / "onnx")

    threads = torch.get_num_threads()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(work / "onnx" / IMAGE_GRAPH), options, providers=["CPUExecutionProvider"])
    hf = {attn: clip_model(model, attn) for attn in ("eager", "sdpa")}
    mean, std = model.pixel_mean, model.pixel_std

    pixels = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    rows = {
        "visembed (torch eager)": lambda: F.normalize(model.encode_image(pixels), dim=-1),
        "transformers CLIPModel, eager attention": lambda: F.normalize(features(hf["eager"].get_image_features(pixel_values=(pixels - mean) / std)), dim=-1),
        "transformers CLIPModel, sdpa attention": lambda: F.normalize(features(hf["sdpa"].get_image_features(pixel_values=(pixels - mean) / std)), dim=-1),
        "onnxruntime (visembed export)": lambda: torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0]),
    }
    with torch.no_grad():
        reference = rows["visembed (torch eager)"]()
        for name, run in rows.items():  # the same embeddings, and one warm-up call each
            diff = float((run() - reference).abs().max())
            if diff > 1e-4:
                raise RuntimeError(f"{name} differs from visembed by {diff:.2e}: not the same model")
        fastest = {name: float("inf") for name in rows}
        for _ in range(args.repeats):
            for name, run in rows.items():  # interleaved: a busy neighbour slows every row alike
                start = time.perf_counter()
                run()
                fastest[name] = min(fastest[name], time.perf_counter() - start)

    base = args.batch / fastest["visembed (torch eager)"]
    shape = "a 1-layer ViT" if args.smoke else "ViT-B/16 shape"
    print(f"encode_image, {shape} at {args.image_size} px, batch {args.batch}, best of {args.repeats}, "
          f"{threads} threads; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print("| implementation | images/s | vs visembed |")
    print("| --- | --- | --- |")
    for name, seconds in fastest.items():
        rate = args.batch / seconds
        print(f"| {name} | {rate:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
