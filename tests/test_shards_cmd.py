"""`visembed shards`: img2dataset's layout, read back by the webdataset library, by training and by
`index build`; broken images skipped and counted; a killed run finishes only what it left."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

import visembed
from visembed.data import open_dataset
from visembed.data.shard_writer import write_shards

REPO = Path(visembed.__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "visembed.cli", *args], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=timeout)


def _photos(folder: Path) -> Path:
    """7 captioned images of several sizes, one truncated, one missing its file behind a manifest row."""
    folder.mkdir()
    rows = []
    for i, (w, h) in enumerate([(300, 200), (90, 120), (64, 64), (500, 80), (40, 30), (256, 256), (128, 96)]):
        Image.new("RGB", (w, h), (i * 30, 200 - i * 20, 90)).save(folder / f"p{i}.jpg", quality=90)
        rows.append({"image": f"p{i}.jpg", "caption": f"photo number {i}"})
    data = (folder / "p4.jpg").read_bytes()
    (folder / "p4.jpg").write_bytes(data[: len(data) // 2])  # truncated
    rows.append({"image": "gone.jpg", "caption": "a file that is not there"})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder / "data.jsonl"


def test_shards_are_img2dataset_s_layout_and_the_webdataset_library_reads_them(tmp_path):
    manifest = _photos(tmp_path / "photos")
    out = tmp_path / "shards"
    report = write_shards(str(manifest), out, size=64, shard_size=5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                     "00001.parquet", "00001.tar", "00001_stats.json"]
    assert report.skipped.as_dict() == {"missing_file": 1, "truncated": 1} and report.samples == 6

    samples = list(wds.WebDataset(str(out / "{00000..00001}.tar"), shardshuffle=False).decode("pil"))
    keys = [s["__key__"] for s in samples]
    # img2dataset's keys: shard * 10^digits(shard_size - 1) + row, 5 + 1 digits here; row 4 failed
    assert keys == ["000000", "000001", "000002", "000003", "000010", "000011"]
    for sample in samples:
        image, meta = sample["jpg"], sample["json"]
        assert min(image.size) == min(64, meta["original_width"], meta["original_height"])  # shorter side, never enlarged
        assert (meta["width"], meta["height"]) == image.size and meta["status"] == "success"
        assert sample["txt"] == meta["caption"] and sample["txt"].startswith("photo number")
    assert samples[0]["jpg"].size == (96, 64)  # 300 x 200 keeps its aspect

    rows = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == [f"00000{i}" for i in range(5)]  # failures keep their row
    assert rows[4]["status"] == "failed_to_resize" and rows[4]["error_message"] == "truncated"
    stats = json.loads((out / "00001_stats.json").read_text())
    assert {k: stats[k] for k in ("count", "successes", "failed_to_download", "failed_to_resize")} == {
        "count": 2, "successes": 2, "failed_to_download": 0, "failed_to_resize": 0}  # the manifest left "gone.jpg" out
    assert stats["status_dict"] == {"success": 2}

    # our own readers: a folder of shards is a data spec
    assert [s.id for s in open_dataset(str(out))] == keys


def test_the_shards_command_says_what_it_wrote_and_refuses_bad_input_in_one_line(tmp_path):
    help_text = _cli("shards", "--help")
    assert help_text.returncode == 0 and "img2dataset" in help_text.stdout and "--shard-size" in help_text.stdout
    done = _cli("shards", str(_photos(tmp_path / "photos")), "--out", str(tmp_path / "s"), "--size", "32",
                "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "wrote 6 images in 1 shard(s)" in done.stdout and "missing_file=1" in done.stdout
    again = _cli("shards", str(tmp_path / "photos" / "data.jsonl"), "--out", str(tmp_path / "s"), "--no-progress")
    assert "wrote 0 images in 0 shard(s)" in again.stdout and "1 already finished" in again.stdout
    for bad in (["no/such/data.jsonl", "--out", str(tmp_path / "x")],
                ["builtin:shapes", "--out", str(tmp_path / "x"), "--size", "0"]):
        result = _cli("shards", *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_index_build_reads_a_folder_of_shards(tmp_path, tiny_model_dir):
    out = tmp_path / "shards"
    write_shards(str(_photos(tmp_path / "photos")), out, size=32, shard_size=4, progress=False)
    built = _cli("index", "build", str(tiny_model_dir), "--data", str(out), "--out", str(tmp_path / "index"))
    assert built.returncode == 0, built.stdout + built.stderr
    found = _cli("search", str(tmp_path / "index"), "photo", "--json", "-k", "10")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 6


@pytest.mark.slow
def test_a_killed_shards_run_is_finished_by_a_rerun_that_redoes_only_the_unfinished_shard(tmp_path):
    args = ["shards", "builtin:shapes?n=1000", "--size", "32", "--shard-size", "50", "--no-progress"]
    whole = subprocess.Popen([sys.executable, "-m", "visembed.cli", *args, "--out", str(tmp_path / "whole")],
                             env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = tmp_path / "killed"
    killed = subprocess.Popen([sys.executable, "-m", "visembed.cli", *args, "--out", str(out)], env=_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while len(list(out.glob("*_stats.json"))) < 2 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    finished = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    stats = sorted(p.name for p in out.glob("*_stats.json"))
    assert 2 <= len(stats) < 16, "the run finished before it could be killed"

    rerun = _cli(*args, "--out", str(out))
    whole.communicate(timeout=300)
    assert rerun.returncode == 0 and whole.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(stats)} already finished" in rerun.stdout
    for name, mtime in finished.items():  # finished shards untouched
        if name.split(".")[0].split("_")[0] + "_stats.json" in stats:
            assert (out / name).stat().st_mtime_ns == mtime, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed run's temporaries are gone
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in out.iterdir()) == names and len(names) == 48
    for name in names:
        if name.endswith(".tar"):
            a = [(s["__key__"], s["jpg"], s["txt"]) for s in wds.WebDataset(str(out / name), shardshuffle=False)]
            b = [(s["__key__"], s["jpg"], s["txt"]) for s in wds.WebDataset(str(tmp_path / "whole" / name),
                                                                             shardshuffle=False)]
            assert a == b, name
