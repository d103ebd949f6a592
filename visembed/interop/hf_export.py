"""A visembed model folder -> a transformers folder (weights renamed, never changed).

- ViT + BPE text transformer -> `CLIPModel` + `CLIPProcessor` (CLIPImageProcessor + a fast tokenizer).
- ViT + pretrained HF text tower (the LiT set-up) -> `VisionTextDualEncoderModel` + its processor.
- a captioner (ViT, `embedding_tokens=0`) -> `LlavaForConditionalGeneration` + `LlavaProcessor` (llava.py).
- EfficientNet-Lite + a pretrained HF text tower (the `demo` kind) -> a sentence-transformers folder
  whose image route is transformers' `EfficientNetModel` (sentence_transformers_export.py).

Weight names come from `hf_names.py`; the pieces shared with the LLaVA export (strict saving, CLIP's
vision config and image processor, the transformers 4.x patch) from `hf_folder.py`.

Two traps, handled here:
- transformers' CLIP text tower pools at the *first* `eos_token_id` in the ids, except when
  `eos_token_id == 2`, where it takes the argmax of the ids (a legacy rule; releases before 4.31
  always take the argmax). Our BPE has `<eos>` = 2, so the export swaps `<eos>` with the
  tokenizer's last id (and the two rows of the token embedding): `<eos>` is then both the first
  end token and the largest id, and every release pools the same position as visembed.
- our BPE adds `<bos>`/`<eos>` by hand; the exported `tokenizer.json` gets a post-processor that
  adds them, after truncation, as our tower does.

The LiT text tower mean-pools the encoder's tokens (sentence-transformers' pooling), while
`VisionTextDualEncoderModel.get_text_features` projects the BERT pooler output ([CLS] through a
tanh layer): the model card says how to compute the same text embedding with transformers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from visembed.atomic import atomic_write_text, new_dir
from visembed.checkpoint import read_config
from visembed.config import RunConfig
from visembed.interop.hf_folder import (ONNX_HINT, ExportError, image_processor, readable_by_transformers_4, save_hf_model,
                                        vision_config, vision_differences)
from visembed.interop.hf_names import to_hf_name
from visembed.interop.llava import check_captioner, export_llava, llava_card_notes
from visembed.interop import sentence_transformers_export as st_export
from visembed.models import load_model_folder



def check_exportable(cfg: RunConfig) -> str:
    """'clip', 'dual_encoder', 'llava' (the transformers class the model maps onto) or 'sentence_transformers',
    or an ExportError."""
    v, t = cfg.model.vision, cfg.model.text
    if cfg.model.architecture == "captioner":
        check_captioner(cfg)
        return "llava"
    if v.kind == "efficientnet_lite":
        st_export.check_exportable(cfg)
        return "sentence_transformers"
    if v.kind != "vit":
        raise ExportError(f"model.vision.kind is {v.kind!r}: transformers has no image tower equivalent to visembed's "
                          f"{v.kind} (the ViT maps onto CLIP's vision model, EfficientNet-Lite onto EfficientNet); "
                          f"{ONNX_HINT}")
    if v.head != "linear":
        raise ExportError(f"model.vision.head is {v.head!r}: transformers' CLIP projects with one bias-free linear layer; "
                          f"{ONNX_HINT}")
    siglip = vision_differences(cfg) + ([f"model.{name}" for name, value, clip in (
        ("text.pool", t.pool, "eos"), ("text.causal", t.causal, True),
        ("text.projection_bias", t.projection_bias, False), ("text.layer_norm_eps", t.layer_norm_eps, 1e-5))
        if value != clip] + (["model.text.activation"] if t.activation == "gelu_tanh" else [])
        if t.kind == "transformer" else [])  # (an hf tower has none of these settings)
    if siglip:
        raise ExportError(f"{', '.join(siglip)} differ from CLIP's (a SigLIP-style model): --format hf writes CLIPModel "
                          f"folders only; {ONNX_HINT}")
    if t.kind == "hf" and t.cjk_student.enabled:
        raise ExportError("the text tower routes CJK text to a distilled student: transformers has no equivalent of that "
                          f"routing; {ONNX_HINT}")
    return "clip" if t.kind == "transformer" else "dual_encoder"


def clip_tokenizer(tokenizer, state: dict[str, torch.Tensor]):
    """(a `tokenizers.Tokenizer` that adds begin/end itself with `<eos>` at the largest id, its special
    ids); swaps the token embedding rows in `state` to match."""
    from tokenizers import Tokenizer, processors

    from visembed.models.bpe_tokenizer import BOS, EOS, BPETokenizer

    wrapped = BPETokenizer(tokenizer)
    if wrapped.specials:  # imported: it adds its own begin/end tokens already
        return tokenizer, wrapped
    last = tokenizer.get_vocab_size() - 1
    last_token = tokenizer.id_to_token(last)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab[EOS], vocab[last_token] = last, wrapped.eos_id
    for entry in data["added_tokens"]:
        if entry["content"] == EOS:
            entry["id"] = last
        elif entry["content"] == last_token:
            entry["id"] = wrapped.eos_id
    swapped = Tokenizer.from_str(json.dumps(data))
    swapped.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, wrapped.bos_id),
                                                                                                     (EOS, last)])
    rows = state["text.token_embedding.weight"].clone()
    rows[[wrapped.eos_id, last]] = rows[[last, wrapped.eos_id]]
    state["text.token_embedding.weight"] = rows
    return swapped, BPETokenizer(swapped)


def _fast_tokenizer(tokenizer, wrapped, context_length: int):
    from transformers import PreTrainedTokenizerFast

    name = tokenizer.id_to_token
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=name(wrapped.bos_id), eos_token=name(wrapped.eos_id),
                                   pad_token=name(wrapped.pad_id), model_max_length=context_length,
                                   model_input_names=["input_ids", "attention_mask"])


def _export_clip(model, cfg: RunConfig, out: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    t = cfg.model.text
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tokenizer, wrapped = clip_tokenizer(model.text.tokenizer.tokenizer, state)
    text_config = {"vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
                   "num_hidden_layers": t.depth, "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
                   "hidden_act": t.activation, "layer_norm_eps": 1e-5, "projection_dim": cfg.model.embed_dim,
                   "bos_token_id": wrapped.bos_id, "eos_token_id": wrapped.eos_id, "pad_token_id": wrapped.pad_id}
    config = CLIPConfig(text_config=text_config, vision_config=vision_config(cfg, cfg.model.embed_dim),
                        projection_dim=cfg.model.embed_dim, logit_scale_init_value=float(state["logit_scale"]))
    hf_state = {}
    for name, tensor in state.items():
        if name == "logit_bias":  # SigLIP loss: CLIPModel scores have no bias (embeddings are unaffected)
            continue
        hf_state[to_hf_name(name)] = tensor
    save_hf_model(CLIPModel(config), hf_state, out)
    processor = CLIPProcessor(image_processor=image_processor(cfg), tokenizer=_fast_tokenizer(tokenizer, wrapped, t.context_length))
    processor.save_pretrained(out)
    readable_by_transformers_4(out, processor)


def _export_dual_encoder(model, cfg: RunConfig, model_dir: Path, out: Path) -> None:
    from transformers import AutoConfig, CLIPVisionConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel
    from transformers import VisionTextDualEncoderProcessor

    from visembed.models.text_hf import ENCODER_DIR

    text_config = AutoConfig.from_pretrained(model_dir / ENCODER_DIR)
    vision = CLIPVisionConfig(**vision_config(cfg, cfg.model.embed_dim))
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text_config,
                                                                  projection_dim=cfg.model.embed_dim,
                                                                  logit_scale_init_value=float(model.logit_scale))
    hf_state = {}
    for name, tensor in model.state_dict().items():
        if name == "logit_bias":
            continue
        if name.startswith("text.encoder."):
            hf_state["text_model." + name[len("text.encoder."):]] = tensor
        else:
            hf_state[to_hf_name(name)] = tensor
    save_hf_model(VisionTextDualEncoderModel(config), hf_state, out)
    _vision_names_of_transformers_4(out / "model.safetensors")
    processor = VisionTextDualEncoderProcessor(image_processor=image_processor(cfg), tokenizer=model.text.tokenizer)
    processor.save_pretrained(out)
    readable_by_transformers_4(out, processor)


def _vision_names_of_transformers_4(path: Path) -> None:
    """transformers 5 saves a VisionTextDualEncoder's CLIP tower as `vision_model.embeddings...`;
    4.x looks for `vision_model.vision_model.embeddings...` and, not finding it, initialises the tower
    at random with only a warning. 5.x reads the 4.x names too, so the folder is written with them."""
    from safetensors.torch import load_file, save_file

    from visembed.atomic import atomic_write

    state = load_file(str(path))
    state = {("vision_model." + k if k.startswith("vision_model.") else k): v for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def export_card(cfg: RunConfig, model_dir: Path, kind: str) -> str:
    from visembed.models.card import model_card, run_metrics

    card = model_card(cfg, run_metrics(model_dir))
    card = card.replace("Load it with `visembed.load(folder)`.", "Exported by `visembed export --format hf`.", 1)
    if kind == "clip":
        use = ["```python", "from transformers import CLIPModel, AutoProcessor",
               "model, processor = CLIPModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)",
               "inputs = processor(text=[\"a red apple\"], images=[image], return_tensors=\"pt\", padding=True)",
               "image_embeds = model.get_image_features(pixel_values=inputs[\"pixel_values\"])  # L2-normalise both",
               "text_embeds = model.get_text_features(input_ids=inputs[\"input_ids\"], attention_mask=inputs[\"attention_mask\"])",
               "```", "",
               "`<eos>` has the largest token id, so every transformers release pools the same position visembed does."]
    elif kind == "llava":
        use = llava_card_notes(cfg)
    elif kind == "sentence_transformers":
        use = st_export.card_notes(cfg)
    else:
        use = ["```python", "import torch.nn.functional as F",
               "from transformers import VisionTextDualEncoderModel, AutoProcessor",
               "model, processor = VisionTextDualEncoderModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)",
               "image_embeds = model.get_image_features(**processor(images=[image], return_tensors=\"pt\"))",
               "t = processor(text=[\"a red apple\"], return_tensors=\"pt\", padding=True)",
               "hidden = model.text_model(**t).last_hidden_state  # the text tower mean-pools, as sentence-transformers",
               "mask = t[\"attention_mask\"].unsqueeze(-1).float()",
               "text_embeds = model.text_projection((hidden * mask).sum(1) / mask.sum(1))  # L2-normalise both",
               "```", "",
               "`get_text_features` projects BERT's pooler output ([CLS] through a tanh layer) instead: not the "
               "embedding this model was trained with."]
    title = "sentence-transformers and transformers" if kind == "sentence_transformers" else "transformers"
    notes = ["", f"## Use with {title}", "", *use, "",
             "Images: `CLIPImageProcessor` resizes the shorter side (bicubic) and centre-crops, as visembed does; the "
             "pixels are the same with its PIL backend (the one transformers picks without torchvision)."]
    if cfg.model.loss == "siglip":
        notes += ["", f"Trained with the SigLIP loss: its learnt `logit_bias` ({cfg.model.init_logit_bias} at start) is "
                  "not carried (transformers' classes have no place for it); embeddings are unaffected."]
    notes += ["", "## Licence", "",
              "The weights are yours to license; what the model started from and its training data keep their own "
              "licences and attribution (above)."]
    return card + "\n".join(notes) + "\n"


def export_hf(model_dir: str | Path, out: str | Path) -> Path:
    """Write the transformers folder of the visembed model folder `model_dir` to `out` (a new or empty folder)."""
    model_dir, out = Path(model_dir), Path(out)
    cfg = read_config(model_dir)
    kind = check_exportable(cfg)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose a new --out")
    if kind == "llava":
        with new_dir(out) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_llava(model_dir, cfg, tmp)
            atomic_write_text(tmp / "README.md", export_card(cfg, model_dir, kind))
        return out
    model, cfg = load_model_folder(model_dir, "cpu")
    with new_dir(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "clip":
                _export_clip(model, cfg, tmp)
            elif kind == "sentence_transformers":
                st_export.export_sentence_transformers(model, cfg, tmp)
            else:
                _export_dual_encoder(model, cfg, model_dir, tmp)
        atomic_write_text(tmp / "README.md", export_card(cfg, model_dir, kind))
    return out
