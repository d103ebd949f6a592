"""The `demo` kind (EfficientNet-Lite + head, a Hugging Face text encoder) -> a sentence-transformers folder.

What a user gets: `SentenceTransformer(folder).encode(images or texts)` gives visembed's embeddings
(equal to 1e-4, tested), with no code of ours and no `trust_remote_code`. sentence-transformers'
`Router` sends images and texts down two routes, each made of parts that exist in transformers or
sentence-transformers already:

    image: Transformer(transformers' EfficientNetModel, pooler_output) -> Dense (GELU) -> Dense
    text:  Transformer(the BERT encoder, e.g. MiniLM) -> Pooling(mean) -> Normalize -> Dense
    then:  Normalize

The image route's folder (`image_0_Transformer`) is also a plain transformers folder
(`AutoModel` + `AutoImageProcessor`), and the model card shows the few lines of torch that apply the
head without sentence-transformers.

EfficientNet-Lite in transformers' EfficientNet. transformers has no Lite variant (timm has, but
timm needs torchvision, which does not install beside our torch build). Lite is EfficientNet-B0's
graph with three differences, each of which transformers' own model can express exactly:
- ReLU6 everywhere: `hidden_act="relu6"`.
- No squeeze-and-excitation: transformers always builds the SE gate, so its convolutions get zero
  weights and the gate's bias is 100: sigmoid(100) is exactly 1.0 in float32 (and in float16/bfloat16),
  so each gate multiplies by one, bit for bit.
- Stem and head fixed at 32 and 1280 channels, first and last stage one block: the channel and
  repeat lists are written out already scaled (width and depth coefficients 1.0).
TensorFlow 'SAME' padding (what our tower computes per input): transformers pads the stem and every
stride-2 depthwise convolution as SAME does for an *even* input (one more pixel bottom/right), and
symmetrically for the blocks listed in `depthwise_padding`: the export lists the blocks whose input
is odd at the model's image size, and refuses an odd image size (the stem has no such switch).
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from visembed.config import RunConfig
from visembed.interop.hf_folder import ONNX_HINT, ExportError, image_processor
from visembed.models.vision_efficientnet import scaled_stages

INSTALL_HINT = "exporting this model needs sentence-transformers: pip install 'visembed[sentence-transformers]'"
GATE_OPEN = 100.0  # sigmoid(100) == 1.0 exactly in float32: an SE gate that passes its input unchanged
# our block parts -> transformers' EfficientNetBlock parts (conv, batch norm)
_BLOCK_PARTS = {"expand": ("expansion.expand_conv", "expansion.expand_bn"),
                "depthwise": ("depthwise_conv.depthwise_conv", "depthwise_conv.depthwise_norm"),
                "project": ("projection.project_conv", "projection.project_bn")}
_TOP_PARTS = {"stem": ("embeddings.convolution", "embeddings.batchnorm"), "head": ("encoder.top_conv", "encoder.top_bn")}


def check_exportable(cfg: RunConfig) -> None:
    """An ExportError unless the model is an EfficientNet-Lite tower beside a Hugging Face text encoder."""
    v, t = cfg.model.vision, cfg.model.text
    if t.kind != "hf":
        raise ExportError(f"model.text.kind is {t.kind!r}: an EfficientNet-Lite model exports for sentence-transformers "
                          f"with a Hugging Face text encoder (model.text.kind=hf) only; {ONNX_HINT}")
    if v.image_size % 2:
        raise ExportError(f"model.vision.image_size is {v.image_size}: transformers' EfficientNet pads its stem as "
                          f"TensorFlow does for an even size only, so an odd size cannot be exported exactly; {ONNX_HINT}")


def hf_name(key: str) -> str:
    """Our tower's state-dict key -> transformers' EfficientNetModel key.

    stem.conv.weight -> embeddings.convolution.weight; blocks.3.depthwise.bn.running_mean ->
    encoder.blocks.3.depthwise_conv.depthwise_norm.running_mean; head.bn.bias -> encoder.top_bn.bias.
    """
    *path, part, layer, tensor = key.split(".")  # e.g. ["blocks", "3"], "depthwise", "bn", "running_mean"
    conv, norm = (_BLOCK_PARTS if path else _TOP_PARTS)[part]
    prefix = f"encoder.blocks.{path[1]}." if path else ""
    return f"{prefix}{conv if layer == 'conv' else norm}.{tensor}"


def efficientnet_config(tower, image_size: int):
    """transformers' `EfficientNetConfig` for our `EfficientNetLite` tower at `image_size` pixels."""
    from transformers import EfficientNetConfig

    stages = scaled_stages(tower.variant)  # (repeats, kernel, stride, expand, in, out) per stage
    odd_inputs, size = [], math.ceil(image_size / 2)  # the stem halves the image
    for i, block in enumerate(tower.blocks):
        if block.depthwise.conv.stride[0] == 2:
            if size % 2:
                odd_inputs.append(i)  # SAME pads an odd input symmetrically
            size = math.ceil(size / 2)
    return EfficientNetConfig(
        image_size=image_size, width_coefficient=1.0, depth_coefficient=1.0, depth_divisor=8,
        num_block_repeats=[s[0] for s in stages], kernel_sizes=[s[1] for s in stages], strides=[s[2] for s in stages],
        expand_ratios=[s[3] for s in stages], in_channels=[s[4] for s in stages], out_channels=[s[5] for s in stages],
        depthwise_padding=odd_inputs, hidden_dim=tower.width, hidden_act="relu6", squeeze_expansion_ratio=0.0,
        batch_norm_eps=tower.stem.bn.eps, pooling_type="mean", dropout_rate=0.0, drop_connect_rate=0.0)


def efficientnet_model(tower, image_size: int):
    """transformers' `EfficientNetModel` holding our tower's weights (SE gates open); checked strictly."""
    from transformers import EfficientNetModel

    hf = EfficientNetModel(efficientnet_config(tower, image_size)).eval()
    state = {hf_name(k): v.detach().clone() for k, v in tower.state_dict().items()}
    for key, tensor in hf.state_dict().items():
        if ".squeeze_excite." in key:
            state[key] = torch.full_like(tensor, GATE_OPEN) if key.endswith("expand.bias") else torch.zeros_like(tensor)
    missing, unexpected = sorted(set(hf.state_dict()) - set(state)), sorted(set(state) - set(hf.state_dict()))
    if missing or unexpected:
        raise ExportError(f"internal name mapping incomplete (missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    hf.load_state_dict(state, strict=True)  # shapes checked here
    return hf


def _dense(layer: nn.Linear, activation: nn.Module):
    from sentence_transformers.base.modules import Dense

    dense = Dense(layer.in_features, layer.out_features, bias=layer.bias is not None, activation_function=activation)
    dense.linear.load_state_dict(layer.state_dict())
    return dense


def head_modules(projection: nn.Module) -> list:
    """Our image head (`visual_projection`) as sentence-transformers `Dense` modules."""
    if isinstance(projection, nn.Identity):
        return []
    if isinstance(projection, nn.Linear):
        return [_dense(projection, nn.Identity())]
    first, activation, last = projection  # the mlp head: Linear -> GELU -> Linear
    return [_dense(first, nn.GELU(approximate=activation.approximate)), _dense(last, nn.Identity())]


def sentence_transformer(model, cfg: RunConfig, work: Path):
    """A `SentenceTransformer` computing `model`'s image and text embeddings; its parts written under `work`."""
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize, Router, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError as e:
        raise ExportError(INSTALL_HINT) from e

    image_dir, text_dir = work / "image", work / "text"
    efficientnet_model(model.vision, cfg.model.vision.image_size).save_pretrained(image_dir)
    image_processor(cfg).save_pretrained(image_dir)
    model.text.encoder.save_pretrained(text_dir)
    tokenizer = copy.deepcopy(model.text.tokenizer)
    tokenizer.model_max_length = model.text.max_length  # so that truncation=True cuts where visembed does
    tokenizer.save_pretrained(text_dir)
    image = Transformer(str(image_dir), module_output_name="sentence_embedding",
                        modality_config={"image": {"method": "forward", "method_output_name": "pooler_output"}})
    text = Transformer(str(text_dir), max_seq_length=model.text.max_length)
    width = model.text.width
    routes = {"image": [image, *head_modules(model.visual_projection)],
              "text": [text, Pooling(width, "mean"), Normalize(), _dense(model.text_projection, nn.Identity())]}
    return SentenceTransformer(modules=[Router(routes), Normalize()], similarity_fn_name="cosine", device="cpu")


def export_sentence_transformers(model, cfg: RunConfig, out: Path) -> None:
    """Write the sentence-transformers folder of `model` (a loaded dual encoder) into the empty folder `out`."""
    with tempfile.TemporaryDirectory() as work:
        sentence_transformer(model, cfg, Path(work)).save(str(out))


def card_notes(cfg: RunConfig) -> list[str]:
    """The model card's "use it" lines for a sentence-transformers export."""
    lines = ["```python", "from PIL import Image", "from sentence_transformers import SentenceTransformer",
             "model = SentenceTransformer(folder)",
             "image_embeds = model.encode([Image.open(\"photo.jpg\")])  # L2-normalised, as visembed's",
             "text_embeds = model.encode([\"a red apple\"])",
             "```", "",
             "Images go through transformers' `EfficientNetModel` (`image_0_Transformer/`, a plain transformers "
             "folder: EfficientNet-Lite written as EfficientNet with ReLU6 and its squeeze-and-excitation gates held "
             "open at exactly 1), then the image head; texts through the text encoder, mean pooling and the "
             "projection. Without sentence-transformers, with transformers and torch only:", "",
             "```python", "import torch.nn.functional as F", "from safetensors.torch import load_file",
             "from transformers import AutoImageProcessor, AutoModel, AutoTokenizer",
             "image_model = AutoModel.from_pretrained(f\"{folder}/image_0_Transformer\")",
             "processor = AutoImageProcessor.from_pretrained(f\"{folder}/image_0_Transformer\")",
             "x = image_model(**processor(images=[image], return_tensors=\"pt\")).pooler_output"]
    if cfg.model.vision.head == "mlp":
        lines += ["for i, act in ((1, F.gelu), (2, lambda y: y)):  # the image head: Linear -> GELU -> Linear",
                  "    dense = load_file(f\"{folder}/image_{i}_Dense/model.safetensors\")",
                  "    x = act(F.linear(x, dense[\"linear.weight\"], dense[\"linear.bias\"]))"]
    elif cfg.model.vision.head == "linear":
        lines += ["x = F.linear(x, load_file(f\"{folder}/image_1_Dense/model.safetensors\")[\"linear.weight\"])"]
    lines += ["image_embeds = F.normalize(x, dim=-1)",
              "tokenizer = AutoTokenizer.from_pretrained(f\"{folder}/text_0_Transformer\")",
              "text_model = AutoModel.from_pretrained(f\"{folder}/text_0_Transformer\")",
              "t = tokenizer([\"a red apple\"], padding=True, truncation=True, return_tensors=\"pt\")",
              "mask = t[\"attention_mask\"].unsqueeze(-1).float()",
              "pooled = F.normalize((text_model(**t).last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1)",
              "weight = load_file(f\"{folder}/text_3_Dense/model.safetensors\")[\"linear.weight\"]",
              "text_embeds = F.normalize(F.linear(pooled, weight), dim=-1)", "```"]
    if cfg.model.text.cjk_student.enabled:
        lines += ["", "Chinese, Japanese and Korean text: visembed sends it to a small distilled student encoder; "
                  "sentence-transformers has no way to route text by script, so this folder encodes every text with "
                  "the English encoder. For Chinese queries use visembed itself, or `visembed export --format onnx`, "
                  "which carries the student as its own graph."]
    return lines
