"""`visembed.load(..., backend=)`: the encoders run as exported ONNX graphs in onnxruntime (the
same vectors within the export's 1e-4 check), exported once per weights and cached; `auto` falls
back to torch, saying why; int8 graphs are a separate, opt-in cache."""

import sys

import numpy as np
import pytest

import visembed
from visembed.data import open_dataset

TEXTS = ["a red circle left of a blue square", "a small green triangle", "红色的圆"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def shapes_images(n=12):
    return [s.image for s in list(open_dataset("builtin:shapes?n=64", "test"))[:n]]


def test_onnx_backend_gives_the_torch_vectors_and_exports_once(tiny_model_dir, cache):
    torch_model = visembed.load(tiny_model_dir)
    onnx_model = visembed.load(tiny_model_dir, backend="onnx")
    images = shapes_images()
    assert np.abs(onnx_model.encode_image(images) - torch_model.encode_image(images)).max() <= 1e-4
    assert np.abs(onnx_model.encode_text(TEXTS) - torch_model.encode_text(TEXTS)).max() <= 1e-4
    assert onnx_model.encode_image(images[:5], batch_size=2).shape == (5, torch_model.embed_dim)
    assert onnx_model.encode_text([]).shape == (0, torch_model.embed_dim)
    graphs = sorted(cache.glob("onnx/*/image_encoder.onnx"))
    assert len(graphs) == 1 and onnx_model.graphs == graphs[0].parent
    written = graphs[0].stat().st_mtime_ns
    again = visembed.load(tiny_model_dir, backend="onnx")
    assert again.graphs == onnx_model.graphs and graphs[0].stat().st_mtime_ns == written  # reused, not re-exported
    with pytest.raises(TypeError, match="list of images"):
        onnx_model.encode_image(images[0])


def test_int8_graphs_are_cached_beside_and_stay_close(tiny_model_dir, cache):
    float_model = visembed.load(tiny_model_dir, backend="onnx")
    int8 = visembed.load(tiny_model_dir, backend="onnx", quantize="int8")
    assert int8.graphs.name == float_model.graphs.name + "-int8"
    images = shapes_images()
    a, b = float_model.encode_image(images), int8.encode_image(images)
    assert not np.array_equal(a, b)  # quantised: really another graph
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-3)
    # close to the float vectors (recall is measured in benchmarks/): with 8-bit weights the products
    # saturate on CPUs without VNNI (AVX2 only) and this ViT's vectors fell to cosine 0.94
    assert float((a * b).sum(1).min()) > 0.995


def test_auto_falls_back_to_torch_and_says_why(tiny_model_dir, cache, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a machine without the onnx extra
    model = visembed.load(tiny_model_dir, backend="auto")
    assert type(model).__name__ == "Model"
    assert "using the torch backend (onnxruntime is not installed" in capsys.readouterr().err
    assert not cache.exists() or not list(cache.glob("onnx/*"))


def test_auto_takes_onnx_on_a_cpu_where_it_can(tiny_model_dir, cache):
    assert type(visembed.load(tiny_model_dir, backend="auto")).__name__ == "OnnxModel"


def test_bad_backend_options_are_clear(tiny_model_dir, cache):
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, auto"):
        visembed.load(tiny_model_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="needs the onnx backend"):
        visembed.load(tiny_model_dir, quantize="int8")
    with pytest.raises(ValueError, match="quantize must be int8"):
        visembed.load(tiny_model_dir, backend="onnx", quantize="int4")


def test_a_captioner_on_the_onnx_backend_still_writes_captions(tiny_captioner_dir, cache):
    model = visembed.load(tiny_captioner_dir, backend="onnx")
    image = shapes_images(1)
    caption, = model.caption(image)
    assert isinstance(caption, str) and caption
    assert model.encode_image(image).shape == (1, model.embed_dim)


def test_commands_take_the_backend(tiny_model_dir, cache, tmp_path):
    from typer.testing import CliRunner

    from visembed.cli import app as cli

    runner = CliRunner()
    vectors = {}
    for backend in ("torch", "onnx"):
        result = runner.invoke(cli, ["embed", str(tiny_model_dir), "--data", "builtin:shapes?n=64", "--split", "test",
                                     "--out", str(tmp_path / backend), "--backend", backend])
        assert result.exit_code == 0, result.output
        vectors[backend] = np.load(tmp_path / f"{backend}.npy")
    assert vectors["torch"].shape[0] > 0 and np.abs(vectors["torch"] - vectors["onnx"]).max() <= 1e-4
    result = runner.invoke(cli, ["index", "build", str(tiny_model_dir), "--data", "builtin:shapes?n=64",
                                 "--out", str(tmp_path / "index"), "--quiet", "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["embed", str(tiny_model_dir), "--data", "builtin:shapes?n=64", "--out",
                                 str(tmp_path / "x"), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "backend must be one of torch, onnx, auto" in result.output


def _cli(*args, cache):
    import os
    import subprocess

    env = {**os.environ, "VISEMBED_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "visembed.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_eval_through_onnx_gives_the_torch_metrics(tiny_model_dir, cache, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)  # eval writes eval_test.json into the folder
    data = "builtin:shapes?n=64"
    metrics = {}
    for backend in ("torch", "onnx"):
        proc = _cli("eval", folder, "--data", data, "--backend", backend, cache=cache)
        assert proc.returncode == 0, proc.stderr[-2000:]
        metrics[backend] = json.loads(proc.stdout)
    assert list(cache.glob("onnx/*/image_encoder.onnx"))  # the graphs really ran
    numbers = {k: v for k, v in metrics["torch"].items() if isinstance(v, float)}
    assert "text_to_image_R@1" in numbers
    items = len(list(open_dataset(data, "test")))
    for name, value in numbers.items():  # vectors within 1e-4: at most one item may swap rank
        assert abs(metrics["onnx"][name] - value) <= 1.0 / items + 1e-9, (name, value, metrics["onnx"][name])


def test_a_captioners_image_side_runs_in_onnxruntime_and_writes_the_torch_captions(tiny_captioner_dir, cache):
    import torch

    torch_model = visembed.load(tiny_captioner_dir)
    onnx_model = visembed.load(tiny_captioner_dir, backend="onnx")
    graph = onnx_model.graphs / "captioner_image_features.onnx"
    assert graph.is_file()
    pixels = torch_model.pixels(shapes_images(4))
    with torch.no_grad():
        expected = torch_model.module.features(pixels)
    got = onnx_model.torch_model.image_features(pixels)
    assert onnx_model.torch_model.feature_runner is not None
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-4
    images = shapes_images(6)
    assert onnx_model.caption(images, candidates=2) == torch_model.caption(images, candidates=2)


def test_caption_command_takes_the_backend(tiny_captioner_dir, cache, tmp_path):
    image = tmp_path / "shape.png"
    shapes_images(1)[0].save(image)
    out = {}
    for backend in ("torch", "onnx"):
        proc = _cli("caption", tiny_captioner_dir, image, "--backend", backend, "--candidates", "2", cache=cache)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[backend] = proc.stdout
    assert out["onnx"] == out["torch"] and out["onnx"].strip()
    assert list(cache.glob("onnx/*/captioner_image_features.onnx"))
    proc = _cli("caption", tiny_captioner_dir, image, "--backend", "tensorrt", cache=cache)
    assert proc.returncode != 0 and "backend must be one of torch, onnx, auto" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_int8_captioner_quantises_its_features_graph_too(tiny_captioner_dir, cache):
    model = visembed.load(tiny_captioner_dir, backend="onnx", quantize="int8")
    assert (model.graphs / "captioner_image_features.onnx").is_file() and model.graphs.name.endswith("-int8")
    caption, = model.caption(shapes_images(1), candidates=1)
    assert isinstance(caption, str) and caption


def test_commands_take_int8_and_an_index_keeps_its_vectors_one_kind(tiny_model_dir, cache, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from visembed.cli import app as cli
    from visembed.index import open_store
    from visembed.index.searcher import Searcher

    runner = CliRunner()
    data = "builtin:shapes?n=64"

    def embed(name, *options):
        result = runner.invoke(cli, ["embed", str(tiny_model_dir), "--data", data, "--out", str(tmp_path / name),
                                     *options])
        assert result.exit_code == 0, result.output
        return np.load(tmp_path / f"{name}.npy")

    float_vectors = embed("float", "--backend", "onnx")
    int8_vectors = embed("int8", "--backend", "onnx", "--quantize", "int8")
    assert not np.array_equal(float_vectors, int8_vectors)  # the quantised graphs really ran
    assert float((float_vectors * int8_vectors).sum(1).min()) > 0.9
    assert list(cache.glob("onnx/*-int8/image_encoder.onnx"))
    for options, message in ((["--quantize", "int8"], "needs the onnx backend"),
                             (["--backend", "onnx", "--quantize", "int4"], "quantize must be int8")):
        result = runner.invoke(cli, ["embed", str(tiny_model_dir), "--data", data, "--out", str(tmp_path / "x"),
                                     *options])
        assert result.exit_code == 2 and message in result.output, result.output

    index = tmp_path / "index"
    result = runner.invoke(cli, ["index", "build", str(tiny_model_dir), "--data", data, "--split", "train",
                                 "--out", str(index), "--quiet", "--backend", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert open_store(index).info["quantize"] == "int8"
    result = runner.invoke(cli, ["index", "add", str(index), "--data", data, "--split", "test", "--quiet"])
    assert result.exit_code != 0 and "holds int8 vectors" in result.output  # float items would not be alike
    manifest = json.loads((index / "index.json").read_text())
    tampered = tmp_path / "tampered"
    shutil.copytree(index, tampered)
    (tampered / "index.json").write_text(json.dumps({**manifest, "quantize": "x" * 100_000}))
    result = runner.invoke(cli, ["index", "add", str(tampered), "--data", data, "--split", "test", "--quiet"])
    assert result.exit_code != 0 and "unknown kind" in result.output and len(result.output) < 2000, result.output[:300]
    result = runner.invoke(cli, ["index", "add", str(index), "--data", data, "--split", "test", "--quiet",
                                 "--backend", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0 and "added" in result.output, result.output
    result = runner.invoke(cli, ["index", "build", str(tiny_model_dir), "--data", data, "--split", "train",
                                 "--out", str(index), "--quiet"])  # float shards into the int8 folder: refused
    assert result.exit_code != 0 and "another model or dataset" in result.output, result.output
    searcher = Searcher.open(index, model_backend="onnx", model_quantize="int8")
    assert searcher.model.quantize == "int8" and searcher.search_text("a red circle", k=3)


def test_caption_command_takes_int8(tiny_captioner_dir, cache, tmp_path):
    from typer.testing import CliRunner

    from visembed.cli import app as cli

    image = tmp_path / "shape.png"
    shapes_images(1)[0].save(image)
    result = CliRunner().invoke(cli, ["caption", str(tiny_captioner_dir), str(image), "--candidates", "1",
                                      "--backend", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0 and result.output.strip(), result.output
    assert list(cache.glob("onnx/*-int8/captioner_image_features.onnx"))
