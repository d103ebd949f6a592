"""Sharing the machine (`visembed.threads`): beside a busy process threads wait passively, the thread
count stays torch's unless fixed (it changes trained bits), a caller's settings are kept, a child
decides again, and bad values are one clear line."""

import json
import os
import subprocess
import sys
import time

import pytest

from visembed.threads import configure_threads, cores_busy_elsewhere, parse_threads

PROBE = ("import json, os; from visembed.threads import configure_threads; c = configure_threads({value!r}); "
         "import torch; print(json.dumps([torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), c.threads]))")


def probe(value=None, **env):
    """configure_threads in a fresh process, then torch: -> [torch threads, OMP_WAIT_POLICY, threads set]."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "VISEMBED_THREADS"))}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(value=value)], capture_output=True, text=True,
                          env={**clean, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture()
def busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield
    spinner.kill()
    spinner.wait()


def test_thread_counts_parse_or_fail_clearly():
    assert parse_threads(None) is None and parse_threads("auto") is None and parse_threads(" 3 ") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="positive number of threads or auto"):
            parse_threads(bad)


def test_a_busy_process_is_seen_and_makes_threads_wait_passively(busy_core):
    assert cores_busy_elsewhere() >= 0.8  # the spinner's core, at least
    threads, wait, fixed = probe()
    assert wait == "PASSIVE" and fixed is None
    assert threads == len(os.sched_getaffinity(0))  # the count stays torch's: trained bits do not change


def test_a_fixed_count_reaches_torch_and_callers_settings_are_kept(busy_core):
    assert probe(1)[0] == 1
    assert probe(None, VISEMBED_THREADS="1")[0] == 1
    assert probe(None, OMP_WAIT_POLICY="ACTIVE")[1] == "ACTIVE"  # the caller's wait policy
    assert probe(None, OMP_NUM_THREADS="1")[0] == 1  # torchrun's one thread per worker


def test_a_child_of_visembed_decides_again(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("VISEMBED_THREADS_SET", "OMP_WAIT_POLICY=PASSIVE,OMP_NUM_THREADS=1")  # as a parent leaves it
    monkeypatch.delenv("VISEMBED_THREADS", raising=False)
    choice = configure_threads(None)
    assert choice.threads is None and "OMP_NUM_THREADS" not in os.environ
    assert os.environ.get("OMP_WAIT_POLICY") == choice.wait_policy  # PASSIVE again only if the machine is busy now


def test_help_does_not_look_at_the_machine(monkeypatch):
    """`visembed CMD --help` loads no torch: it skips the quarter second of /proc/stat sampling."""
    from typer.testing import CliRunner

    import visembed.threads
    from visembed.cli import app

    def no_sampling(*_):
        raise AssertionError("sampled the machine for --help")

    monkeypatch.setattr(visembed.threads, "cores_busy_elsewhere", no_sampling)
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "VISEMBED_THREADS", "VISEMBED_THREADS_SET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["visembed", "train", "--help"])
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--preset" in result.output, result.output
    monkeypatch.setattr(sys, "argv", ["visembed", "eval", "missing-folder"])  # a command: the machine is looked at
    result = CliRunner().invoke(app, ["eval", "missing-folder"])
    assert isinstance(result.exception, AssertionError) and "sampled the machine" in str(result.exception)


@pytest.mark.parametrize("args, env", [(["--threads", "0"], {}), ([], {"VISEMBED_THREADS": "many"})])
def test_bad_thread_settings_are_one_clear_line(args, env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visembed.cli", *args, "eval", str(tmp_path), "--data", "builtin:shapes"],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 2 and "positive number of threads or auto" in proc.stderr
    assert "Traceback" not in proc.stderr


TRAIN = ("import hashlib, sys; from safetensors.torch import load_file; from visembed.config import apply_overrides, "
         "load_preset; from visembed.train.loop import train; "
         "train(apply_overrides(load_preset('tiny'), ['train.steps=3', 'train.checkpoint_every=3', "
         "'data.train=builtin:shapes?n=96']), sys.argv[1], progress=False); "
         "w = load_file(sys.argv[1] + '/model.safetensors'); "
         "print(hashlib.sha256(b''.join(w[k].numpy().tobytes() for k in sorted(w))).hexdigest())")


@pytest.mark.slow  # two short trainings in fresh processes
def test_the_passive_wait_policy_trains_the_same_bits(tmp_path):
    """What `auto` changes beside a busy process (OMP_WAIT_POLICY) never changes what is computed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "VISEMBED_THREADS"))}
    digests = []
    for policy in (None, "PASSIVE"):
        env = {**clean, "OMP_NUM_THREADS": "2", **({"OMP_WAIT_POLICY": policy} if policy else {})}
        proc = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / str(policy))], capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
