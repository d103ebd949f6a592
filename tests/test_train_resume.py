"""A `visembed train` killed with SIGKILL and resumed ends with the same weights as one that never stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visembed
from visembed.checkpoint import latest_checkpoint

REPO = Path(visembed.__file__).resolve().parents[1]
# augmentation stays on: a resumed run must also draw the same random crops and colours
ARGS = ["--data", "builtin:shapes?n=400", "--preset", "tiny", "--steps", "8", "--batch-size", "24",
        "--checkpoint-every", "2", "--seed", "7", "--no-progress", "--set", "train.warmup_steps=2"]


def _train(out: Path, *extra: str) -> subprocess.Popen:
    # one thread each: two runs side by side on 2 cores would otherwise oversubscribe them, and
    # OpenMP threads waiting on each other make small ops many times slower
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "visembed.cli", "train", "--out", str(out), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    uninterrupted = _train(tmp_path / "whole")  # side by side: start-up costs overlap
    killed = _train(tmp_path / "killed")
    deadline = time.time() + 240
    while latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"

    log = _finish(_train(tmp_path / "killed", "--resume"))
    _finish(uninterrupted)
    assert "resuming from" in log

    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    different = [name for name in whole if not torch.equal(whole[name], resumed[name])]
    assert not different, f"resumed weights differ in {different[:5]}"
    steps = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert len(steps) == 8 // 5 + 1  # log_every 5 -> steps 5 and 8, each once despite the kill
