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
    assert float((a * b).sum(1).min()) > 0.9  # close to the float vectors (recall is measured in benchmarks/)


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
