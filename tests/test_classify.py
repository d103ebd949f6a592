"""Classifiers end to end on a real tiny model: `visembed classify fit|predict|eval|curve`, the
classifier folder through `visembed.load`, POST /classify, the ONNX export, fine-tuning, and bad
input as one clear line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import visembed
from visembed.cli import app


def _manifest(folder, n=240, classes=None):
    """builtin:shapes scenes as PNG files + a jsonl manifest labelled by shape (3 classes), split column."""
    from visembed.data import open_dataset

    rows = []
    for split in ("train", "test"):
        for i, sample in enumerate(open_dataset(f"builtin:shapes?n={n}&size=32", split)):
            label = sample.label.split()[1]
            if classes and label not in classes:
                continue
            path = folder / f"{split}{i}.png"
            sample.image.save(path)
            rows.append({"image": path.name, "caption": sample.caption, "label": label, "split": split})
    manifest = folder / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _manifest(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VISEMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def probe_dir(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "probe"
    result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", out, "--method", "probe", "--shots", 8,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_a_classifier_folder_with_a_card(probe_dir):
    config = json.loads((probe_dir / "classifier.json").read_text())
    assert config["method"] == "probe" and config["classes"] == ["circle", "square", "triangle"]
    assert config["fit"]["shots"] == 8 and config["fit"]["images_used"] == 24
    assert config["head"]["block_norm"] is True  # the probe's default (each feature block centred, L2-normalised)
    assert config["features"] == "embedding+pooled+layout+middle+late"  # the default, chosen by measurement
    assert "top1" in config["fit"]["eval"]  # measured on the data's test split at fit time
    card = (probe_dir / "README.md").read_text()
    assert "probe" in card and "top-1" in card


def test_load_predict_and_cli_predict_agree(probe_dir, data):
    clf = visembed.load(probe_dir, device="cpu")
    assert clf.classes == ["circle", "square", "triangle"]
    image = data.parent / "test0.png"
    found = clf.predict([str(image), Image.open(image)], k=2)
    assert len(found) == 2 and [len(f) for f in found] == [2, 2]
    assert found[0] == found[1] and found[0][0]["probability"] >= found[0][1]["probability"]
    probs = clf.probabilities([str(image)])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1, atol=1e-5)
    bad = data.parent / "broken.png"
    bad.write_bytes(b"not an image")
    result = cli("classify", "predict", probe_dir, image, bad, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout[result.stdout.index("["):])
    assert len(body) == 1 and body[0]["labels"][0]["label"] == found[0][0]["label"]
    assert "unreadable" in result.output  # skipped and counted


def test_eval_reports_metrics_and_draws_confusion(probe_dir, data, tmp_path):
    out = tmp_path / "confusion.png"
    result = cli("classify", "eval", probe_dir, "--data", data, "--split", "test", "--confusion", out, "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"top1", "top5", "mean_per_class_recall", "per_class_recall"} <= set(metrics)
    assert set(metrics["per_class_recall"]) <= {"circle", "square", "triangle"} and metrics["top5"] == 1.0
    assert out.stat().st_size > 1000 and Image.open(out).format == "PNG"


def test_zs_probe_and_tip_fit_and_the_head_uses_the_shots(tiny_model_dir, data, tmp_path):
    for method in ("zeroshot", "zs-pseudo", "semi", "zs-probe", "tip", "tip-f"):
        out = tmp_path / method
        result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", out, "--method", method,
                     "--shots", 4, "--no-progress")
        assert result.exit_code == 0, (method, result.output)
    from safetensors.numpy import load_file

    assert "keys" in load_file(str(tmp_path / "tip" / "head.safetensors"))
    assert "weight" not in load_file(str(tmp_path / "zeroshot" / "head.safetensors"))
    assert "weight" in load_file(str(tmp_path / "zs-probe" / "head.safetensors"))
    # zs-pseudo: a probe beside zero-shot, fitted on the train split's images without a label
    assert {"weight", "zs_weight"} <= set(load_file(str(tmp_path / "zs-pseudo" / "head.safetensors")))
    fit = json.loads((tmp_path / "zs-pseudo" / "classifier.json").read_text())["fit"]
    assert fit["shots"] == 0 and fit["images_used"] == sum('"train"' in line for line in data.read_text().splitlines())
    assert "unlabelled images (no label read)" in (tmp_path / "zs-pseudo" / "README.md").read_text()
    assert visembed.load(tmp_path / "zs-pseudo").predict([Image.new("RGB", (32, 32), "red")], k=2)[0][0]["label"]
    # semi: the shots' probe beside zs-pseudo on the split's images; the card says which labels it read
    fit = json.loads((tmp_path / "semi" / "classifier.json").read_text())["fit"]
    assert fit["shots"] == 4 and fit["images_used"] == 12 and fit["unlabelled_images"] > 12
    assert "no other label read" in (tmp_path / "semi" / "README.md").read_text()
    assert {"weight", "zs_weight"} <= set(load_file(str(tmp_path / "semi" / "head.safetensors")))


def test_semi_reads_the_unlabelled_images_beside_a_few_labelled_ones(tiny_model_dir, data, tmp_path):
    """The usual case: a few labelled images and many without a label in the same data. `semi` reads
    them all as its pool (their labels, where any, unread); `probe` skips the unlabelled ones."""
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    seen: dict[str, int] = {}
    for row in rows:
        if row["split"] == "train":
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            if seen[row["label"]] > 2:
                del row["label"]  # no label at all
    few = data.parent / "few.jsonl"
    few.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_rows = sum(r["split"] == "train" for r in rows)
    fits = {}
    for method in ("semi", "probe"):
        result = cli("classify", "fit", tiny_model_dir, "--data", few, "--out", tmp_path / method, "--method", method,
                     "--shots", 2, "--no-progress")
        assert result.exit_code == 0, (method, result.output)
        fits[method] = json.loads((tmp_path / method / "classifier.json").read_text())["fit"]
    assert fits["semi"]["unlabelled_images"] == train_rows and fits["semi"]["images_used"] == 6
    assert fits["probe"]["images_used"] == 6 and fits["probe"]["skipped"].get("missing_label") == train_rows - 6


def test_curve_draws_and_writes_json(tiny_model_dir, data, tmp_path):
    out = tmp_path / "curve.png"
    result = cli("classify", "curve", tiny_model_dir, "--data", data, "--shots", 0, 1, 2, "--seeds", 2,
                 "--methods", "zeroshot", "zs-pseudo", "probe", "semi", "knn", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert set(curve["methods"]) == {"zeroshot", "zs-pseudo", "probe", "semi", "knn"}
    assert set(curve["methods"]["semi"]) == {"1", "2"}  # from one shot: with none it is zs-pseudo
    assert set(curve["methods"]["probe"]) == {"1", "2"} and len(curve["methods"]["probe"]["2"]["runs"]) == 2
    assert list(curve["methods"]["zeroshot"]) == ["0"]
    assert list(curve["methods"]["zs-pseudo"]) == ["0"] and len(curve["methods"]["zs-pseudo"]["0"]["runs"]) == 2
    assert Image.open(out).format == "PNG"


def test_class_names_file_fits_zero_label_methods_on_a_plain_folder_of_photos(tiny_model_dir, tmp_path):
    """`--classes FILE`: the class names come from the file, the images (a plain folder, no label,
    no caption) from --data; methods that learn from labels refuse it in one line."""
    from visembed.data import open_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, sample in enumerate(open_dataset("builtin:shapes?n=60&size=32", "test")):
        sample.image.save(photos / f"{i:03d}.png")
    names = tmp_path / "names.txt"
    names.write_text("# the classes\ncircle\nsquare\n\ntriangle\n")
    for method in ("zeroshot", "zs-pseudo"):
        out = tmp_path / method
        result = cli("classify", "fit", tiny_model_dir, "--data", photos, "--classes", names, "--method", method,
                     "--out", out, "--no-progress")
        assert result.exit_code == 0, (method, result.output)
        config = json.loads((out / "classifier.json").read_text())
        assert config["classes"] == ["circle", "square", "triangle"] and "eval" not in config["fit"]
        top = visembed.load(out).predict([Image.new("RGB", (32, 32), "red")], k=3)[0]
        assert {item["label"] for item in top} == {"circle", "square", "triangle"}
    assert config["fit"]["images_used"] == len(list(photos.glob("*.png")))  # zs-pseudo read every photo
    # zero-shot from a names file reads no image, so it needs no data at all; zs-pseudo does
    result = cli("classify", "fit", tiny_model_dir, "--classes", names, "--method", "zeroshot", "--out",
                 tmp_path / "names-only", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "no image read" in (tmp_path / "names-only" / "README.md").read_text()
    red = [Image.new("RGB", (32, 32), "red")]
    assert visembed.load(tmp_path / "names-only").predict(red, k=3) == visembed.load(tmp_path / "zeroshot").predict(red, k=3)
    needs_data = cli("classify", "fit", tiny_model_dir, "--classes", names, "--method", "zs-pseudo", "--out",
                     tmp_path / "nd", "--no-progress")
    assert needs_data.exit_code == 2 and "--data is needed" in needs_data.output
    refused = cli("classify", "fit", tiny_model_dir, "--data", photos, "--classes", names, "--method", "probe",
                  "--out", tmp_path / "p", "--no-progress")
    assert refused.exit_code == 2 and "--classes goes with zeroshot and zs-pseudo" in refused.output
    for text, expected in (("circle\n", "at least two"), ("circle\nsquare\ncircle\n", "listed twice: circle"),
                           ("\udcff\udcfe circle\n", "not UTF-8 text")):
        names.write_bytes(text.encode("utf-8", "surrogateescape"))
        result = cli("classify", "fit", tiny_model_dir, "--data", photos, "--classes", names, "--method", "zeroshot",
                     "--out", tmp_path / "bad", "--no-progress")
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("case", ["one_class", "fewer_than_shots", "bad_templates", "unknown_method", "unknown_labels"])
def test_bad_input_is_one_clear_line(case, tiny_model_dir, data, probe_dir, tmp_path):
    if case == "one_class":
        one = _manifest(tmp_path, n=60, classes={"circle"})
        result = cli("classify", "fit", tiny_model_dir, "--data", one, "--out", tmp_path / "o", "--no-progress")
        expected = "at least two classes"
    elif case == "fewer_than_shots":
        result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", tmp_path / "o", "--method", "probe",
                     "--shots", 500, "--no-progress")
        assert result.exit_code == 0, result.output
        assert "fewer than 500 images; used what there is" in result.output
        return
    elif case == "bad_templates":
        templates = tmp_path / "t.txt"
        templates.write_text("a photo of a cat\n")
        result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", tmp_path / "o", "--method",
                     "zeroshot", "--templates", templates, "--no-progress")
        expected = "exactly one {}"
    elif case == "unknown_method":
        result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", tmp_path / "o", "--method", "svm")
        expected = "--method must be one of"
    else:  # eval on data whose labels the head does not know
        other = tmp_path / "other.jsonl"
        rows = [json.loads(line) for line in data.read_text().splitlines()][:10]
        other.write_text("".join(json.dumps({"image": str(data.parent / r["image"]), "caption": r["caption"],
                                             "label": "banana"}) + "\n" for r in rows))
        result = cli("classify", "eval", probe_dir, "--data", other, "--split", "test", "--no-progress")
        expected = "has a class this classifier knows"
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


def test_post_classify_answers_labels_and_4xx_on_bad_input(tiny_model_dir, probe_dir, data, tmp_path_factory):
    from fastapi.testclient import TestClient

    from test_index_build import shapes_index
    from visembed.serve.app import create_app

    index = shapes_index(tiny_model_dir, tmp_path_factory)
    image = (data.parent / "test0.png").read_bytes()
    expected = visembed.load(probe_dir, device="cpu").predict([Image.open(io.BytesIO(image))], k=2)[0]
    with TestClient(create_app(index, classifier_dir=probe_dir), base_url="http://localhost") as client:
        reply = client.post("/classify", files={"file": ("a.png", image, "image/png")}, data={"k": "2"})
        assert reply.status_code == 200, reply.text
        labels = reply.json()["labels"]
        assert [x["label"] for x in labels] == [x["label"] for x in expected]
        assert np.allclose([x["probability"] for x in labels], [x["probability"] for x in expected], atol=1e-4)
        assert client.get("/classifier").json()["classes"] == ["circle", "square", "triangle"]
        assert client.get("/capabilities").json()["classifier"] is True  # what the page asks before showing labels
        assert client.post("/classify", files={"file": ("a.png", b"nope", "image/png")}).status_code in (415, 422)
        assert client.post("/classify", files={"file": ("a.png", image, "image/png")}, data={"k": "0"}).status_code == 422
        assert client.post("/classify").status_code == 422
        page = client.get("/static/app.js").text
        assert "/classify" in page and "example-labels" in client.get("/").text
    with TestClient(create_app(index), base_url="http://localhost") as client:
        reply = client.post("/classify", files={"file": ("a.png", image, "image/png")})
        assert reply.status_code == 404 and "--classifier" in reply.json()["detail"]


def test_onnx_export_gives_the_classifier_probabilities(probe_dir, data, tmp_path):
    pytest.importorskip("onnxruntime")
    from visembed.interop.onnx import run_graph

    out = tmp_path / "onnx"
    result = cli("export", probe_dir, "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "classes.json").read_text()) == ["circle", "square", "triangle"]
    clf = visembed.load(probe_dir, device="cpu")
    images = [str(data.parent / f"test{i}.png") for i in range(3)]
    pixels = clf.model.pixels(images).numpy()
    got = run_graph(out / "classifier.onnx", {"pixels": pixels})
    assert np.allclose(got, clf.probabilities(images), atol=1e-4)


def test_finetune_lp_ft_wise_ft(tiny_model_dir, data, tmp_path):
    out = tmp_path / "ft"
    result = cli("classify", "fit", tiny_model_dir, "--data", data, "--out", out, "--method", "finetune", "--shots", 4,
                 "--steps", 3, "--wise-alpha", "0.5", "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "classifier.json").read_text())
    assert config["method"] == "finetune" and config["model"] == "model" and config["fit"]["wise_alpha"] == 0.5
    assert (out / "model" / "model.safetensors").is_file()
    assert (tmp_path / "ft.work" / "run" / "model.safetensors").is_file()  # the fine-tuning run, resumable
    from safetensors.numpy import load_file

    base, tuned = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    moved = [k for k in base if k.startswith("vision.") and not np.allclose(base[k], tuned[k])]
    assert moved  # the image tower itself was trained (LP-FT), then interpolated (WiSE-FT)
    clf = visembed.load(out, device="cpu")
    assert clf.predict([str(data.parent / "test0.png")], k=1)[0][0]["label"] in clf.classes


def test_class_folders_fit_and_eval(tiny_model_dir, tmp_path):
    """root/{train,test}/<class>/*.png (`_` reads as a space): classes from folder names."""
    from visembed.data import open_dataset

    for split in ("train", "test"):
        for i, sample in enumerate(open_dataset("builtin:shapes?n=120&size=32", split)):
            names = {"circle": "round_thing", "square": "four_sides", "triangle": "three_sides"}
            folder = tmp_path / "root" / split / names[sample.label.split()[1]]
            folder.mkdir(parents=True, exist_ok=True)
            sample.image.save(folder / f"{i}.png")
    out = tmp_path / "clf"
    result = cli("classify", "fit", tiny_model_dir, "--data", tmp_path / "root", "--out", out, "--shots", 4,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    classes = json.loads((out / "classifier.json").read_text())["classes"]
    assert sorted(classes) == ["four sides", "round thing", "three sides"]
    result = cli("classify", "eval", out, "--data", tmp_path / "root", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_images"] > 0


def test_finetune_starts_from_a_copy_without_the_feature_cache(tiny_model_dir, tmp_path):
    """The demo model keeps a locked tower's feature cache; its fine-tuning run (augmented, cache off)
    must still resume and merge (WiSE-FT), so it starts from a copy of the model with the cache off
    (a `vit` like the tiny model's cannot have a cache, so the folder is checked as files)."""
    import shutil

    from visembed.train.tasks.classification import init_without_feature_cache

    assert init_without_feature_cache(tiny_model_dir, tmp_path / "work") == tiny_model_dir  # no cache: as it is
    cached = tmp_path / "cached-model"
    shutil.copytree(tiny_model_dir, cached)
    config = json.loads((cached / "config.json").read_text())
    config["model"]["vision"]["feature_cache"] = 1000
    (cached / "config.json").write_text(json.dumps(config))
    init = init_without_feature_cache(cached, tmp_path / "work")
    assert init == tmp_path / "work" / "init"
    assert json.loads((init / "config.json").read_text())["model"]["vision"]["feature_cache"] == 0
    assert json.loads((cached / "config.json").read_text())["model"]["vision"]["feature_cache"] == 1000  # untouched
    assert (init / "model.safetensors").read_bytes() == (cached / "model.safetensors").read_bytes()
    assert sorted(p.name for p in init.iterdir()) == sorted(p.name for p in cached.iterdir())


FINETUNE_SCRIPT = """
import sys
from visembed.train.tasks.classification import finetune_classifier
model, data, out = sys.argv[1:4]
finetune_classifier(model, data, out, shots=4, seed=0, steps=2, batch_size=12, lr=1e-3, augment=False,
                    eval_split=None, progress=False)
"""


@pytest.mark.slow
def test_finetune_under_torchrun_takes_the_steps_of_one_process(tiny_model_dir, data, tmp_path):
    """`finetune` on 2 processes (torchrun, 6 shots each a step) trains the tower and head exactly as
    1 process with the whole batch of 12: the head goes through the DDP wrapper, so gradients are
    averaged (without it the ranks drift apart and from one process). Augmentation off: each rank
    draws its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    repo = Path(visembed.__file__).resolve().parents[1]
    script = tmp_path / "finetune.py"
    script.write_text(FINETUNE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {name: subprocess.Popen([*launcher, str(script), str(tiny_model_dir), str(data), str(tmp_path / name)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo)
            for name, launcher in (("one", [sys.executable]), ("two", torchrun))}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out}"
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    one_model = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    for part in ("model/model.safetensors", "head.safetensors"):
        one, two = load_file(str(tmp_path / "one" / part)), load_file(str(tmp_path / "two" / part))
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=f"{part}: {name}")
    moved = [k for k in base if k.startswith("vision.") and not torch.allclose(base[k], one_model[k])]
    assert moved  # the tower itself was trained


@pytest.mark.slow
def test_finetune_under_torchrun_stops_every_rank_when_rank_0_cannot_prepare(tiny_model_dir, tmp_path):
    """Rank 0 fits the LP head alone; data it refuses (generated images, not files) stops the other
    rank too, with one line each, instead of leaving it waiting at a barrier forever."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(visembed.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "visembed.cli", "classify", "fit", str(tiny_model_dir), "--data",
                           "builtin:shapes?n=60&size=32", "--method", "finetune", "--shots", "2", "--out",
                           str(tmp_path / "ft"), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert any("needs images stored as files" in line for line in errors), proc.stderr
    assert any("rank 1: rank 0 could not prepare" in line for line in errors), proc.stderr
    assert "[rank1]: Traceback" not in proc.stderr
