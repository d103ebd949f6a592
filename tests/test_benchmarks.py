"""Every benchmark still runs: each script in `benchmarks/` is run as a user runs it (a fresh process,
`python benchmarks/NAME.py`) at its `--smoke` size, and must exit 0 having printed its markdown
table. A script whose smoke run needs a machine CI lacks (a GPU) is run with `--help`. Benchmarks
report figures; nothing here checks a figure or a time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# script -> extra arguments beside --smoke; "{tmp}" is the test's temporary folder
SMOKE = {
    "caption_quality.py": ["--out", "{tmp}/runs"],
    "captioner_lora.py": [],
    "cjk_student.py": [],
    "efficientnet_speed.py": [],
    "emoji_quality.py": ["--out", "{tmp}/runs"],
    "export_speed.py": [],
    "fewshot.py": [],
    "first_search.py": [],
    "inference_backends.py": [],
    "loader_speed.py": [],
    "milvus.py": [],
    "probe.py": [],
    "search.py": [],
    "ssl_pretraining.py": [],
    "threads.py": [],
    "train_speed.py": [],
    "train_throughput.py": [],
    "wise_ft.py": ["--work", "{tmp}/runs"],
}
SLOW = {"caption_quality.py", "cjk_student.py", "fewshot.py", "first_search.py", "loader_speed.py", "milvus.py",
        "ssl_pretraining.py", "wise_ft.py", "threads.py", "train_speed.py"}  # > ~20 s each on 2 cores (pyproject's `slow`)
HELP_ONLY = {"cuda_smoke.py": "needs a CUDA device"}
TWO_STEPS = {"hf_versions.py": "make --smoke, then check, in this venv"}  # tested on its own below
LIBRARIES = {"emoji_search.py", "markdown_table.py"}  # imported by the benchmarks, not run

TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)  # | --- | --- |


def run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """`python benchmarks/...` from the repository root; temporary files land in `tmp`."""
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)  # a hang guard, not a timing check


def assert_ok(proc: subprocess.CompletedProcess, *, table: bool) -> None:
    said = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, said
    if table:
        assert TABLE_RULE.search(proc.stdout), "no markdown table printed\n" + said


def test_every_benchmark_is_covered():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    covered = set(SMOKE) | set(HELP_ONLY) | set(TWO_STEPS) | LIBRARIES
    assert scripts == covered, f"not run here: {sorted(scripts - covered)}; gone: {sorted(covered - scripts)}"


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in sorted(SMOKE)])
def test_benchmark_smoke_run_prints_its_table(script, tmp_path):
    extra = [arg.format(tmp=tmp_path) for arg in SMOKE[script]]
    assert_ok(run([f"benchmarks/{script}", "--smoke", *extra], tmp_path), table=True)


@pytest.mark.parametrize("script", sorted(HELP_ONLY))
def test_benchmark_help(script, tmp_path):
    proc = run([f"benchmarks/{script}", "--help"], tmp_path)
    assert_ok(proc, table=False)
    assert "usage:" in proc.stdout


@pytest.mark.slow
def test_hf_versions_make_then_check(tmp_path):
    work = tmp_path / "hfv"
    assert_ok(run(["benchmarks/hf_versions.py", "make", str(work), "--smoke"], tmp_path), table=False)
    check = run(["benchmarks/hf_versions.py", "check", str(work)], tmp_path)
    assert_ok(check, table=True)
    assert "CLIPModel" in check.stdout and "VisionTextDualEncoderModel" in check.stdout


def test_every_smoke_flag_is_documented():
    """`--smoke` is in each script's usage lines, so people find it beside the full-size command."""
    for script in SMOKE:
        text = (BENCHMARKS / script).read_text(encoding="utf-8")
        docstring = text.split('"""')[1]
        assert "--smoke" in docstring, script


@pytest.mark.slow
def test_device_check_script_runs_its_cpu_smoke(tmp_path):
    """benchmarks/device_check.sh (the prepared GPU check) is wired up: SMOKE=1 runs it on the CPU."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "SMOKE": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert_ok(proc, table=True)
    assert TABLE_RULE.search((tmp_path / "out" / "device_check.md").read_text(encoding="utf-8"))
