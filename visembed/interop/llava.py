"""A visembed captioner -> a transformers `LlavaForConditionalGeneration` folder (with `LlavaProcessor`).

The mapping is exact (same logits): our ViT is CLIP's vision model (the CLIP export's renaming,
`hf_names.py`), `forward_features` is its last encoder layer's output with the class token (LLaVA's
`vision_feature_layer=-1`, `vision_feature_select_strategy="full"`), the cell projector is LLaVA's
`multi_modal_projector` and the LM is its `language_model` + `lm_head`. What it shares with the CLIP
export (strict saving, the vision config, the image processor) comes from `hf_folder.py`.

- LLaVA's projector is Linear(vision width, LM width) - GELU - Linear(LM width, LM width). A narrower
  hidden layer (`model.captioner.projector_hidden` < LM width) is padded with zero rows (linear_1) and
  zero columns (linear_2): GELU(0) = 0, so the padding adds nothing. A wider one has no place.
- LLaVA has no counterpart of the tokens made from the contrastive embedding: only captioners with
  `model.captioner.embedding_tokens=0` export.
- The head is written untied (`tie_word_embeddings=False`, `lm_head` a copy): a GPT-2 LM inside
  LLaVA cannot be tied in transformers 5.x, and an untied copy is exact for every family.
- Weight names are transformers 4.x's (`language_model.model.*`, `vision_tower.vision_model.*`):
  5.x reads them too, while 4.x silently re-initialises the vision tower of a folder 5.x saved
  (`vision_tower.embeddings.*`). Checked: 4.57.6 and 5.24.0 give the same logits.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from visembed.config import RunConfig
from visembed.interop.hf_folder import (ExportError, image_processor, readable_by_transformers_4, save_hf_model,
                                        vision_config, vision_differences)
from visembed.interop.hf_names import to_hf_name
from visembed.models.lm import IMAGE_TOKEN, LM_DIR, special_ids

HINT = "use the captioner with visembed (caption, chat, serve)"
# transformers 5.x names (in memory, or as its save_pretrained writes them) -> 4.x names
NAMES_OF_TRANSFORMERS_4 = (("model.vision_tower.", "vision_tower.vision_model."),
                           ("vision_tower.vision_model.", "vision_tower.vision_model."),
                           ("vision_tower.", "vision_tower.vision_model."),
                           ("model.multi_modal_projector.", "multi_modal_projector."),
                           ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


def check_captioner(cfg: RunConfig) -> None:
    """What the config alone says: an ExportError naming the first reason the captioner has no LLaVA form."""
    c, v = cfg.model.captioner, cfg.model.vision
    if c.embedding_tokens:
        raise ExportError(
            f"model.captioner.embedding_tokens is {c.embedding_tokens}: the captioner gives its LM tokens made from the "
            "contrastive embedding (a second projector), and LlavaForConditionalGeneration has no place for them. "
            "Train a captioner with `--set model.captioner.embedding_tokens=0` (the image tower's cells only, as LLaVA) "
            f"to export it, or {HINT}")
    if v.kind != "vit":
        raise ExportError(f"model.vision.kind is {v.kind!r}: LLaVA's vision tower is a CLIP ViT, and transformers has no "
                          f"image tower equivalent to visembed's {v.kind}; {HINT}")
    differ = vision_differences(cfg)
    if differ:
        raise ExportError(f"{', '.join(differ)} differ from CLIP's (a SigLIP-style image tower): the LLaVA export writes "
                          f"a CLIP vision tower only; {HINT}")
    if c.lm == "minilm":
        raise ExportError("model.captioner.lm is 'minilm': a BERT encoder run as a decoder (is_decoder=True) does not "
                          "build inside LlavaForConditionalGeneration (transformers makes its language model with "
                          f"AutoModel, a bidirectional BertModel); {HINT}")


def _check_lm(cfg: RunConfig, lm_config) -> None:
    if getattr(lm_config, "is_decoder", False) or lm_config.model_type in ("bert", "roberta", "xlm-roberta", "electra"):
        raise ExportError(f"the captioner's LM is a {lm_config.model_type} encoder run as a decoder (is_decoder=True): "
                          "LlavaForConditionalGeneration builds its language model with AutoModel, which makes it "
                          f"bidirectional; {HINT}")
    width, hidden = lm_config.hidden_size, cfg.model.captioner.projector_hidden
    if hidden > width:
        raise ExportError(
            f"model.captioner.projector_hidden is {hidden}, wider than the LM ({lm_config.model_type}, hidden size "
            f"{width}): LLaVA's projector is Linear(vision, LM) - GELU - Linear(LM, LM), with no room for a wider hidden "
            f"layer (a narrower one is padded exactly). Train the captioner with "
            f"`--set model.captioner.projector_hidden={width}` (the LM's width) to export it, or {HINT}")


def _projector(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """cell_projector.{0,2} -> multi_modal_projector.linear_{1,2}, the hidden layer padded with zeros to `width`."""
    w1, b1 = state["cell_projector.0.weight"], state["cell_projector.0.bias"]  # (P, W), (P,)
    w2, b2 = state["cell_projector.2.weight"], state["cell_projector.2.bias"]  # (H, P), (H,)
    hidden = w1.shape[0]
    return {"model.multi_modal_projector.linear_1.weight": torch.cat([w1, w1.new_zeros(width - hidden, w1.shape[1])]),
            "model.multi_modal_projector.linear_1.bias": torch.cat([b1, b1.new_zeros(width - hidden)]),
            "model.multi_modal_projector.linear_2.weight": torch.cat([w2, w2.new_zeros(w2.shape[0], width - hidden)], 1),
            "model.multi_modal_projector.linear_2.bias": b2}


def llava_state(model) -> dict[str, torch.Tensor]:
    """The captioner's weights under `LlavaForConditionalGeneration`'s names (transformers 5.x)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}
    for name, tensor in state.items():
        if name.startswith("encoder.vision."):
            clip = to_hf_name(name[len("encoder."):])  # the CLIP export's name: vision_model.*
            if clip is None or not clip.startswith("vision_model."):
                raise ExportError(f"internal name mapping incomplete: no CLIP vision name for {name}")
            out["model.vision_tower." + clip[len("vision_model."):]] = tensor
    out.update(_projector(state, model.lm.config.hidden_size))
    base = model.lm.base_model_prefix + "."  # "model." (Qwen2, Llama), "transformer." (GPT-2)
    for name, tensor in model.lm.state_dict().items():
        if name.startswith(base):
            out["model.language_model." + name[len(base):]] = tensor.detach().clone()
    out["lm_head.weight"] = model.lm.get_output_embeddings().weight.detach().clone()  # untied: a copy
    return out


def chat_template(bos: str) -> str:
    """Jinja giving visembed's prompt text (models/chat_format.py):
    `[bos]USER: <image>\\n{question}\\nASSISTANT: {answer}<eos>\\nUSER: ...\\nASSISTANT:`. Contents may be
    strings holding `<image>` or lists of {"type": "image"} / {"type": "text", "text": ...} parts."""
    bos = bos.replace("\\", "\\\\").replace("'", "\\'")  # inside a Jinja string literal
    return (
        "{{- '" + bos + "' -}}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
        "{%- else -%}{%- set parts = namespace(text='') -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set parts.text = parts.text + '" + IMAGE_TOKEN + "\\n' -%}"
        "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set content = parts.text -%}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
        "{%- if '" + IMAGE_TOKEN + "' in content -%}{%- set halves = content.split('" + IMAGE_TOKEN + "', 1) -%}"
        "{{- 'USER: ' + halves[0].strip() + '" + IMAGE_TOKEN + "' + halves[1].rstrip() -}}"
        "{%- else -%}{{- 'USER: ' + content.strip() -}}{%- endif -%}"
        "{{- '\\nASSISTANT:' -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- ' ' + content.strip() + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}")


def _tokenizer(model):
    """The captioner's tokenizer, returning input_ids and attention_mask only (`generate` rejects token_type_ids)."""
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    return tokenizer


def export_llava(model_dir: Path, cfg: RunConfig, out: Path) -> None:
    """Write the LLaVA folder of the captioner in `model_dir` into `out` (an empty folder)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from visembed.models import load_model_folder
    from visembed.models.lm import read_lm_config

    _check_lm(cfg, read_lm_config(model_dir / LM_DIR))  # strict: a damaged lm/config.json is one line
    model, cfg = load_model_folder(model_dir, "cpu")
    tokenizer = _tokenizer(model)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ExportError(f"the captioner's tokenizer has no {IMAGE_TOKEN} token")
    v = cfg.model.vision
    cells = (v.image_size // v.patch_size) ** 2 + 1  # patches and the class token
    text_config = copy.deepcopy(model.lm.config)
    text_config.tie_word_embeddings = False
    vision = {k: val for k, val in vision_config(cfg, cfg.model.embed_dim).items() if k != "projection_dim"}
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=text_config,
                         image_token_id=image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_seq_length=cells, multimodal_projector_bias=True,
                         tie_word_embeddings=False)
    config.architectures = ["LlavaForConditionalGeneration"]
    save_hf_model(LlavaForConditionalGeneration(config).eval(), llava_state(model), out)
    _names_of_transformers_4(out / "model.safetensors")
    bos, eos, pad = special_ids(model.tokenizer)
    generation = json.loads((out / "generation_config.json").read_text()) if (out / "generation_config.json").is_file() \
        else {}
    generation.update({"eos_token_id": eos, "pad_token_id": pad, "do_sample": False})
    if bos is not None:
        generation["bos_token_id"] = bos
    from visembed.atomic import atomic_write_json

    atomic_write_json(out / "generation_config.json", generation)
    processor = LlavaProcessor(image_processor=image_processor(cfg), tokenizer=tokenizer, patch_size=v.patch_size,
                               vision_feature_select_strategy="full", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN,
                               chat_template=chat_template(tokenizer.convert_ids_to_tokens(bos) if bos is not None else ""))
    processor.save_pretrained(out)
    readable_by_transformers_4(out, processor)
    if model.hints:  # the captions its prompts were trained to see (transformers has no retrieval step)
        from visembed.models.captioner import save_hint_bank

        save_hint_bank(model.hint_bank, out)


def _names_of_transformers_4(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from visembed.atomic import atomic_write

    def rename(name: str) -> str:
        for new, old in NAMES_OF_TRANSFORMERS_4:
            if name.startswith(new):
                return old + name[len(new):]
        return name

    state = {rename(k): v for k, v in load_file(str(path)).items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def llava_card_notes(cfg: RunConfig) -> list[str]:
    v, c = cfg.model.vision, cfg.model.captioner
    cells = (v.image_size // v.patch_size) ** 2 + 1
    notes = [
        "```python", "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)",
        "messages = [{\"role\": \"user\", \"content\": [{\"type\": \"image\"}, {\"type\": \"text\", \"text\": \"Describe the image.\"}]}]",
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        "inputs = processor(images=[image], text=[prompt], return_tensors=\"pt\", add_special_tokens=False)",
        "ids = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
        "print(processor.decode(ids[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```", "",
        f"A `LlavaForConditionalGeneration`: the CLIP vision tower's last layer, class token included "
        f"(`vision_feature_layer=-1`, `vision_feature_select_strategy=\"full\"`: {cells} image tokens), through the "
        f"two-layer projector (its hidden layer of {c.projector_hidden} padded with zeros to the LM's width), into "
        "the language model. The chat template writes visembed's prompt (`USER: <image>\\n... \\nASSISTANT:`); it "
        "already holds the begin token, hence `add_special_tokens=False`. visembed tokenises the text before and "
        "after `<image>` and the closing `\\nASSISTANT:` one piece at a time: a tokenizer that merges across those "
        "boundaries can give other ids for the same text (GPT-2's pre-tokenizer splits there; Qwen2's keeps "
        "punctuation and a following newline together).",
        "",
        "Weight names are transformers 4.x's (`language_model.model.*`); 5.x reads them as well. The LM head is an "
        "untied copy of the token embedding when the LM ties them."]
    if c.hints:
        notes += ["", f"Trained with hints: visembed's prompts name the {c.hints} training captions closest to the "
                  "image in its dual-encoder space, on the line after `<image>` (`Similar: a; b; c.`, in Chinese "
                  "`相似：a；b；c。`). transformers has no retrieval step: write that line yourself from `hints.json` "
                  "(the bank, copied here), ranked with the dual encoder (`visembed embed`, or its ONNX export), or "
                  "expect plainer captions without it."]
    return notes
