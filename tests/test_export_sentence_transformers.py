"""`export --format hf` of the demo kind (EfficientNet-Lite + MLP head + a Hugging Face text encoder):
sentence-transformers and plain transformers, the real libraries, give visembed's embeddings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")

import visembed  # noqa: E402
from visembed.checkpoint import save_model_folder  # noqa: E402
from visembed.config import apply_overrides, load_preset  # noqa: E402
from visembed.interop.hf_export import export_hf  # noqa: E402
from visembed.interop.hf_folder import ExportError  # noqa: E402
from visembed.interop.sentence_transformers_export import efficientnet_config  # noqa: E402
from visembed.models import bpe_vocab_size, build_model, needs_bpe_tokenizer  # noqa: E402
from visembed.models.bpe_tokenizer import train_bpe_tokenizer  # noqa: E402

TOL = 1e-4
TEXTS = ["a red apple", "grinning face with big eyes", "a rocket above the moon " * 60, ""]
DEMO_KIND = ["model.vision.kind=efficientnet_lite", "model.vision.head=mlp", "model.vision.head_hidden=48",
             "model.text.kind=hf", "model.text.hf_path=minilm", "data.augment.enabled=false"]


def model_folder(tmp_path: Path, overrides: list[str], pretrained: bool) -> Path:
    """A model folder of the `tiny` preset with `overrides`; without pretrained weights the BatchNorm
    statistics are drawn at random, so that they matter."""
    cfg = apply_overrides(load_preset("tiny"), DEMO_KIND + overrides)
    out = tmp_path / "model"
    out.mkdir()
    if needs_bpe_tokenizer(cfg.model):  # the CJK student's own tokenizer
        train_bpe_tokenizer(["一只猫", "红色的苹果", "猫和狗", "a cat"] * 3, bpe_vocab_size(cfg.model), out)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer_dir=out, pretrained=pretrained)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and not pretrained:
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    save_model_folder(model, cfg, out)
    return out


def images() -> list:
    """Photos of odd shapes, one with transparency (both sides composite it onto white)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 57, 3), dtype=np.uint8)) for i in range(3)]
    rgba = Image.fromarray(rng.integers(0, 256, (50, 50, 4), dtype=np.uint8), "RGBA")
    return rgb + [rgba]


@pytest.fixture(scope="module")
def demo_kind(tmp_path_factory):
    """The demo kind at 72 px (its third and fourth stride-2 blocks see odd maps: 9 and 5 cells), exported."""
    tmp = tmp_path_factory.mktemp("st")
    folder = model_folder(tmp, ["model.vision.image_size=72"], pretrained=True)
    out = tmp / "st"
    export_hf(folder, out)
    return folder, out


def test_sentence_transformers_gives_visembed_embeddings(demo_kind):
    from sentence_transformers import SentenceTransformer

    folder, out = demo_kind
    ours = visembed.load(folder, device="cpu")
    st = SentenceTransformer(str(out), device="cpu")
    pictures = images()
    got_images = st.encode(pictures, convert_to_numpy=True)
    got_texts = st.encode(TEXTS, convert_to_numpy=True)
    assert np.abs(got_images - ours.encode_image(pictures)).max() <= TOL
    assert np.abs(got_texts - ours.encode_text(TEXTS)).max() <= TOL
    assert got_images.shape == (4, got_texts.shape[1]) and got_texts.shape[0] == len(TEXTS)
    # the two routes land in one space: an image's nearest text is visembed's nearest text
    assert (got_images @ got_texts.T).argmax(1).tolist() == (ours.encode_image(pictures) @ ours.encode_text(TEXTS).T).argmax(1).tolist()


def test_the_cards_transformers_only_lines_give_visembed_embeddings(demo_kind):
    """The card's code without sentence-transformers, run as written (only `folder` and `image` given)."""
    folder, out = demo_kind
    card = (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    plain = next(b for b in blocks if "AutoModel.from_pretrained" in b)
    assert "sentence_transformers" not in plain
    picture = images()[3]
    scope = {"folder": str(out), "image": picture}
    exec(compile(plain, "README.md", "exec"), scope)  # noqa: S102 - the card's own lines, on our own export
    ours = visembed.load(folder, device="cpu")
    assert np.abs(scope["image_embeds"].detach().numpy() - ours.encode_image([picture])).max() <= TOL
    assert np.abs(scope["text_embeds"].detach().numpy() - ours.encode_text(["a red apple"])).max() <= TOL


def test_image_route_is_a_plain_transformers_efficientnet_folder(demo_kind):
    from transformers import AutoConfig

    _, out = demo_kind
    config = AutoConfig.from_pretrained(out / "image_0_Transformer")
    assert config.model_type == "efficientnet" and config.hidden_act == "relu6"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "text_0_Transformer").model_max_length == 128  # visembed's cut
    assert config.depthwise_padding == [5, 11]  # the stride-2 blocks whose input is odd at 72 px: 9 and 5 cells
    assert not list(out.rglob("*.py")) and "auto_map" not in (out / "image_0_Transformer" / "config.json").read_text()


def test_wider_and_deeper_variant_without_pretrained_weights(tmp_path):
    """Lite2 (width 1.1, depth 1.2: stem and head stay 32 and 1280, first and last stage one block)."""
    from sentence_transformers import SentenceTransformer

    folder = model_folder(tmp_path, ["model.vision.image_size=64", "model.vision.variant=lite2",
                                     "model.vision.pretrained=false"], pretrained=False)
    out = tmp_path / "st"
    export_hf(folder, out)
    ours = visembed.load(folder, device="cpu")
    got = SentenceTransformer(str(out), device="cpu").encode(images(), convert_to_numpy=True)
    assert np.abs(got - ours.encode_image(images())).max() <= TOL


def test_padding_lists_the_blocks_whose_input_is_odd():
    from visembed.models.vision_efficientnet import EfficientNetLite

    tower = EfficientNetLite("lite0", pretrained=False)
    assert efficientnet_config(tower, 96).depthwise_padding == []  # 48, 24, 12, 6 cells
    assert efficientnet_config(tower, 224).depthwise_padding == []  # 112, 56, 28, 14
    assert efficientnet_config(tower, 80).depthwise_padding == [11]  # 40, 20, 10, 5
    assert efficientnet_config(tower, 72).depthwise_padding == [5, 11]  # 36, 18, 9, 5


def test_cjk_student_is_named_on_the_card(tmp_path):
    folder = model_folder(tmp_path, ["model.vision.image_size=64", "model.text.cjk_student.enabled=true",
                                     "model.text.cjk_student.width=32", "model.text.cjk_student.heads=2",
                                     "model.text.cjk_student.depth=1", "model.text.cjk_student.vocab_size=400"],
                          pretrained=True)
    out = tmp_path / "st"
    export_hf(folder, out)
    card = (out / "README.md").read_text()
    assert "distilled student" in card and "--format onnx" in card


def test_odd_image_size_and_other_text_towers_are_refused_in_one_line(tmp_path):
    folder = model_folder(tmp_path, ["model.vision.image_size=65"], pretrained=True)
    with pytest.raises(ExportError, match="odd size"):
        export_hf(folder, tmp_path / "st")
    result = subprocess.run([sys.executable, "-m", "visembed.cli", "export", str(folder), "--format", "hf",
                             "--out", str(tmp_path / "st2")], capture_output=True, text=True)
    assert result.returncode != 0 and "odd size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "st2").exists()
