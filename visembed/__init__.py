"""visembed: learn visual embeddings (images and text in one space) and put them to work.

    import visembed
    model = visembed.load("runs/demo")
    model.encode_image(["cat.png"]), model.encode_text(["a cat"])   # float32 (N, D), L2-normalised

Kept light: heavy libraries (torch, transformers, faiss, fastapi) load when first used.
"""

__version__ = "0.1.0"


def load(folder, device=None, **options):
    """Load a run or model folder; see `visembed.api.load` (options: backend, quantize)."""
    from visembed.api import load as _load

    return _load(folder, device, **options)


__all__ = ["load", "__version__"]
