"""Trust probe: hostile and broken inputs against the CLI, the library and the HTTP service, as a
table of cases tried / passed per category (issue #11). It reports; it does not assert.

    .venv/bin/python benchmarks/probe.py                   # every category (~2-3 min on 2 cores)
    .venv/bin/python benchmarks/probe.py --only http,memory --verbose
    .venv/bin/python benchmarks/probe.py --smoke           # the http category alone: does it run (CI)
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/probe.py   # probe another tree

Categories and what "passed" means:
  http           ~35 hostile requests (NaN/Infinity/1e400 JSON, bad multipart, huge k, unknown and
                 traversing ids, decompression bomb, foreign Host header, a deletion while serving):
                 the documented 4xx (never 5xx), no heap addresses or tracebacks in the body
  model-folders  truncated / random / empty / oversized-header model.safetensors, broken or
                 wrong-typed config.json, under `visembed eval` and `visembed index build`:
                 non-zero exit, one line on stderr, no traceback
  configs        `visembed train --set KEY=VALUE` with invalid values, and a preset that is a JSON
                 list: non-zero exit, one line naming the key (or the preset file), no traceback
  kill-rebuild   stale-index scenarios: shrunk manifest + changed caption, deletion then rebuild,
                 `index add` killed mid-way then rebuild, `index build` killed mid-way then rerun
  memory         peak RSS of a real `visembed serve` process under 6 concurrent uploads of a
                 ~40-megapixel RGBA PNG (~170 KB): peak growth <= 1 GiB and held growth <= 0.5 GiB

Everything runs in a temporary folder on a tiny generated manifest and a 2-step `tiny` model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

try:
    import visembed  # noqa: F401  (PYTHONPATH may point at another checkout: probe that one)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import visembed  # noqa: F401

from PIL import Image, ImageDraw

TREE = Path(visembed.__file__).resolve().parents[1]
GiB = 1024**3
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


@dataclass
class Case:
    name: str
    passed: bool
    note: str = ""


# ---- helpers ---------------------------------------------------------------------------------

def cli(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`visembed ARGS` in a fresh process of this interpreter, on the probed tree."""
    env = {**os.environ, "PYTHONPATH": str(TREE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-c", "from visembed.cli import main; main()", *map(str, args)]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, -9, exc.stdout or "", f"timed out after {timeout} s")


def clean_failure(proc: subprocess.CompletedProcess, must_name: str | None = None) -> tuple[bool, str]:
    """Non-zero exit, exactly one non-empty stderr line, no traceback, naming `must_name`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return False, "exit 0 (accepted)"
    if "Traceback" in text:
        return False, f"traceback ({lines[-1][:80] if lines else ''})"
    if len(lines) != 1:
        return False, f"{len(lines)} stderr lines"
    if must_name and must_name not in text:
        return False, f"does not name {must_name!r}: {lines[0][:80]}"
    return True, lines[0][:100]


def write_manifest(folder: Path, n: int, changed: dict[int, str] | None = None, prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{prefix}-{i}.png"
        if not path.exists():
            image = Image.new("RGB", (32, 32), "white")
            ImageDraw.Draw(image).ellipse((4 + i % 5, 4, 24, 24 + i % 7), fill=COLOURS[i % len(COLOURS)])
            image.save(path)
        caption = (changed or {}).get(i, f"a {COLOURS[i % len(COLOURS)]} blob number {i}")
        rows.append(json.dumps({"id": f"{prefix}-{i}", "image": path.name, "caption": caption, "split": "train"
                                if i % 4 else "test"}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def live_items(index_dir: Path) -> dict[str, str]:
    from visembed.index.backends import open_store

    store = open_store(index_dir)
    return {item["id"]: item["caption"] for item in store.meta(store.ids())}


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# ---- categories --------------------------------------------------------------------------------

def probe_http(work: Path, model: Path, index: Path) -> list[Case]:
    from fastapi.testclient import TestClient

    from visembed.serve.app import create_app

    cases: list[Case] = []
    with TestClient(create_app(index), base_url="http://localhost", raise_server_exceptions=False) as client:
        ids = [r["id"] for r in client.get("/search", params={"q": "a red blob", "k": 5}).json()["results"]]
        a = ids[0]

        def check(name, response, expected):
            body = response.text
            ok = response.status_code in expected and "0x" not in body and "Traceback" not in body
            cases.append(Case(name, ok, f"{response.status_code} {body[:70]}"))

        def raw_json(name, raw, expected=(422,)):
            check(name, client.post("/recommend", content=raw.encode(), headers={"content-type": "application/json"}),
                  expected)

        for params, expected in [({"q": ""}, (422,)), ({"q": "   "}, (422,)), ({"q": "x" * 501}, (422,)),
                                 ({"q": "x", "k": 0}, (422,)), ({"q": "x", "k": 101}, (422,)),
                                 ({"q": "x", "k": "1e400"}, (422,)), ({"q": "x", "k": "NaN"}, (422,)),
                                 ({"q": "x", "k": "-1"}, (422,)), ({"q": "x", "k": "9" * 30}, (422,)), ({}, (422,))]:
            check(f"GET /search {params!r:.40}", client.get("/search", params=params), expected)
        for raw in [f'{{"liked": ["{a}"], "k": 1e400}}', '{"liked": [NaN]}', f'{{"liked": ["{a}"], "mmr_lambda": Infinity}}',
                    f'{{"liked": ["{a}"], "mmr_lambda": -Infinity}}', "NaN", f'{{"liked": ["{a}"], "disliked": [1e400]}}',
                    "{not json", '{"liked": "abc"}', '{"liked": ["no-such-item"]}', '{"liked": []}',
                    json.dumps({"liked": [a] * 501}), f'{{"liked": ["{a}"], "k": 1000000}}',
                    f'{{"liked": ["{a}"], "k": {"9" * 5000}}}']:
            raw_json(f"POST /recommend {raw:.40}", raw)
        check("POST /recommend text/plain body", client.post("/recommend", content=b"hello",
                                                             headers={"content-type": "text/plain"}), (422, 415))

        def upload(name, payload, expected, data=None, mime="image/png"):
            check(name, client.post("/search/image", files={"file": ("x.png", payload, mime)}, data=data or {}), expected)

        good = png(Image.new("RGB", (40, 40), "red"))
        check("POST /search/image without a file", client.post("/search/image", data={"q": "x"}), (422,))
        upload("upload: a text file", b"hello, I am text", (415,))
        upload("upload: a PDF", b"%PDF-1.4 not an image", (415,))
        upload("upload: truncated PNG", good[: len(good) // 2], (422,))
        upload("upload: empty file", b"", (422,))
        upload("upload: text_weight=NaN", good, (422,), data={"text_weight": "NaN"})
        upload("upload: k=1e400", good, (422,), data={"k": "1e400"})
        bomb = client.post("/search/image", files={"file": ("bomb.png", png(Image.new("1", (20000, 10000))), "image/png")})
        detail = bomb.text
        cases.append(Case("upload: decompression bomb names our limit", bomb.status_code == 413 and "40,000,000" in detail
                          and "178956970" not in detail, f"{bomb.status_code} {detail[:70]}"))
        check("bad multipart body", client.post("/search/image", content=b"--xyz\r\ngarbage",
                                                headers={"content-type": "multipart/form-data; boundary=xyz"}), (400, 422))
        check("oversized body (Content-Length)", client.post("/search/image", content=b"\x00" * (11 * 1024 * 1024),
                                                             headers={"content-type": "multipart/form-data; boundary=x"}),
              (413,))
        for path, expected in [("/items/no-such-item/image", (404,)), ("/items/..%2F..%2F..%2Fetc%2Fpasswd/image", (404,)),
                               (f"/items/{a}/similar?k=0", (422,)), ("/no/such/path", (404,))]:
            check(f"GET {path:.40}", client.get(path), expected)
        check("Host: attacker.example (DNS rebinding)", client.get("/healthz", headers={"host": "attacker.example"}),
              (400,))

        before = client.get("/healthz").json()["items"]
        gone = cli("index", "delete", index, ids[1], cwd=work)
        after = client.get("/healthz").json()["items"]
        hits = [r["id"] for r in client.get("/search", params={"q": "a red blob", "k": 100}).json()["results"]]
        cases.append(Case("deleted while serving: gone from /search and /healthz", gone.returncode == 0
                          and after == before - 1 and ids[1] not in hits, f"items {before} -> {after}"))
    return cases


def probe_model_folders(work: Path, model: Path, manifest: Path) -> list[Case]:
    import shutil

    weights = (model / "model.safetensors").read_bytes()
    variants = {
        "truncated weights": {"model.safetensors": weights[: len(weights) // 2]},
        "random weights": {"model.safetensors": os.urandom(4096)},
        "empty weights": {"model.safetensors": b""},
        "oversized safetensors header": {"model.safetensors": (2**62).to_bytes(8, "little") + b"{}"},
        "config.json not JSON": {"config.json": b"{ not json"},
        "config.json wrong types": {"config.json": json.dumps({"model": "vit", "train": [1, 2]}).encode()},
        "config.json unknown tower kind": {"config.json": json.dumps({"model": {"vision": {"kind": "__init__"}}}).encode()},
        "config.json old and new key together": {"config.json": json.dumps(
            {"train": {"caption_bank_weight": 1.0, "contrastive": {"caption_bank_weight": 2.0}}}).encode()},
    }
    jobs = []
    for name, files in variants.items():
        folder = work / "broken-models" / name.replace(" ", "-")
        shutil.copytree(model, folder, ignore=shutil.ignore_patterns("checkpoints"))
        for file, data in files.items():
            (folder / file).write_bytes(data)
        jobs.append((f"eval, {name}", ("eval", folder, "--data", manifest, "--split", "test")))
        jobs.append((f"index build, {name}", ("index", "build", folder, "--data", manifest,
                                              "--out", work / "broken-index" / folder.name, "--quiet")))
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda job: cli(*job[1], cwd=work), jobs))
    return [Case(name, *clean_failure(proc)) for (name, _), proc in zip(jobs, procs)]


BAD_SETTINGS = ["train.lr=Infinity", "model.vision.std=[0,0,0]", "train.weight_decay=1e400", "model.embed_dim=0",
                "model.vision.patch_size=0", "model.vision.mean=[1]", "model.text.vocab_size=1", "train.grad_clip=NaN",
                "train.warmup_steps=-10", "data.num_workers=-1", "train.checkpoint_every=-1", "model.vision.kind=[1]",
                "train.task=no_such_task", "train.layer_decay=0.5", "train.contrastive.caption_bank_weight=-1"]


def probe_configs(work: Path, manifest: Path) -> list[Case]:
    preset_list = work / "preset-list.json"
    preset_list.write_text("[1, 2, 3]")
    jobs = [(setting, ("--set", setting), setting.split("=")[0]) for setting in BAD_SETTINGS]
    jobs.append(("preset that is a JSON list", ("--preset", preset_list), preset_list.name))

    def run(job):
        name, extra, key = job
        out = work / "bad-config-runs" / str(abs(hash(name)))
        args = ["train", "--data", manifest, "--out", out, "--steps", "1", "--no-progress"]
        if "--preset" not in extra:
            args += ["--preset", "tiny"]
        return cli(*args, *extra, cwd=work, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(run, jobs))
    return [Case(name, *clean_failure(proc, must_name=key)) for (name, _, key), proc in zip(jobs, procs)]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL `proc` as soon as `ready()` holds; False if it finished (or timed out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return False


def _popen_cli(*args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TREE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", "from visembed.cli import main; main()", *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def probe_kill_rebuild(work: Path, model: Path) -> list[Case]:
    cases = []
    data, out = work / "stale-data", work / "stale-index"
    spec = write_manifest(data, 64)
    cli("index", "build", model, "--data", spec, "--out", out, "--shard-size", "16", "--quiet", cwd=work)
    write_manifest(data, 40, changed={3: "a caption that changed"})
    rebuilt = cli("index", "build", model, "--data", spec, "--out", out, "--shard-size", "16", "--quiet", cwd=work)
    items = live_items(out) if rebuilt.returncode == 0 else {}
    cases.append(Case("manifest 64 -> 40 rows and a caption changed, rebuild", len(items) == 40
                      and items.get("img-3") == "a caption that changed",
                      f"{len(items)} items, img-3: {items.get('img-3')!r}; {rebuilt.stdout.strip()[:60]}"))

    cli("index", "delete", out, "img-5", "img-6", cwd=work)
    cli("index", "build", model, "--data", spec, "--out", out, "--shard-size", "16", "--quiet", cwd=work)
    items = live_items(out)
    cases.append(Case("deleted items stay deleted after a rebuild", len(items) == 38 and "img-5" not in items,
                      f"{len(items)} items"))

    extra = write_manifest(work / "extra-data", 600, prefix="extra")
    emb = out / "embeddings"
    before = len(live_items(out))
    adder = _popen_cli("index", "add", out, "--data", extra, "--shard-size", "20", "--batch-size", "20", "--quiet",
                       cwd=work)
    killed = _kill_when(adder, lambda: len(list(emb.glob("added_*.npy"))) >= 2)
    committed = len(live_items(out))
    cli("index", "build", model, "--data", spec, "--out", out, "--shard-size", "16", "--quiet", cwd=work)
    after = len(live_items(out))
    cases.append(Case("index add killed mid-way, then rebuild: nothing uncommitted comes back",
                      killed and committed == before and after == before,
                      f"killed={killed}; live {before} -> {committed} after the kill -> {after} after the rebuild"))

    big, big_out = write_manifest(work / "big-data", 120, prefix="big"), work / "killed-build"
    builder = _popen_cli("index", "build", model, "--data", big, "--out", big_out, "--shard-size", "20",
                         "--batch-size", "20", "--quiet", cwd=work)
    killed = _kill_when(builder, lambda: len(list((big_out / "embeddings").glob("shard_*.npy"))) >= 2)
    resumed = cli("index", "build", model, "--data", big, "--out", big_out, "--shard-size", "20", "--quiet", cwd=work)
    reused = json.loads((big_out / "index.json").read_text()).get("reused_shards") if resumed.returncode == 0 else None
    count = len(live_items(big_out)) if resumed.returncode == 0 else 0
    cases.append(Case("index build killed mid-way, then rerun: resumes and completes", killed and count == 120
                      and (reused or 0) >= 2, f"killed={killed}; {count} items, reused shards {reused}"))
    return cases


def _rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _near_limit_png() -> bytes:
    """6320 x 6320 = 39.9 MP RGBA, mostly transparent with a few shapes: ~170 KB on the wire."""
    image = Image.new("RGBA", (6320, 6320), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse((300 * i, 200 * i, 300 * i + 2000, 200 * i + 1500), fill=(20 * i, 255 - 20 * i, 128, 200))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=9)
    return out.getvalue()


def probe_memory(work: Path, index: Path) -> list[Case]:
    import httpx

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = _popen_cli("serve", index, "--host", "127.0.0.1", "--port", port, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            return [Case("server start", False, "no /healthz within 90 s")]
        payload = _near_limit_png()
        baseline = _rss(server.pid)["VmRSS"]
        statuses = []

        def upload(_):
            with httpx.Client(timeout=300) as client:
                response = client.post(f"{base}/search/image", files={"file": ("big.png", payload, "image/png")})
                statuses.append(response.status_code)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        time.sleep(1.0)
        usage = _rss(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    peak, held = usage["VmHWM"] - baseline, usage["VmRSS"] - baseline
    note = (f"{len(payload) // 1024} KB PNG x6: baseline {baseline / GiB:.2f} GiB, peak +{peak / GiB:.2f} GiB, "
            f"held +{held / GiB:.2f} GiB; statuses {sorted(statuses)}")
    return [Case("6 concurrent ~40 MP RGBA uploads: peak growth <= 1 GiB", peak <= GiB, note),
            Case("... memory held afterwards <= 0.5 GiB", held <= GiB / 2, note),
            Case("... every upload answered 200 or 503 (never 5xx otherwise)",
                 len(statuses) == 6 and set(statuses) <= {200, 503}, note)]


# ---- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated categories (default: all)")
    parser.add_argument("--verbose", action="store_true", help="list every case, not only the table")
    parser.add_argument("--smoke", action="store_true", help="the http category alone (as --only http): does it run")
    args = parser.parse_args()
    wanted = [c for c in ("http" if args.smoke else args.only).split(",") if c] or ["http", "model-folders", "configs",
                                                                                     "kill-rebuild", "memory"]

    started = time.monotonic()
    results: dict[str, list[Case]] = {}
    with tempfile.TemporaryDirectory(prefix="visembed-probe-") as tmp:
        work = Path(tmp)
        manifest = write_manifest(work / "data", 24)
        model = work / "model"
        trained = cli("train", "--data", manifest, "--out", model, "--preset", "tiny", "--steps", "2", "--no-progress",
                      cwd=work)
        if trained.returncode != 0:
            sys.exit(f"cannot train the probe's tiny model: {trained.stderr.strip()[-300:]}")
        index = work / "index"
        built = cli("index", "build", model, "--data", manifest, "--out", index, "--quiet", cwd=work)
        if built.returncode != 0:
            sys.exit(f"cannot build the probe's index: {built.stderr.strip()[-300:]}")
        runs = {"http": lambda: probe_http(work, model, index),
                "model-folders": lambda: probe_model_folders(work, model, manifest),
                "configs": lambda: probe_configs(work, manifest),
                "kill-rebuild": lambda: probe_kill_rebuild(work, model),
                "memory": lambda: probe_memory(work, index)}
        for name in wanted:
            try:
                results[name] = runs[name]()
            except Exception as exc:  # a probe that cannot run is a finding too
                results[name] = [Case(f"{name} probe itself", False, f"{type(exc).__name__}: {exc}"[:150])]

    print(f"visembed trust probe: {TREE}  ({time.monotonic() - started:.0f} s)")
    print(f"| {'category':<14} | {'tried':>5} | {'passed':>6} |")
    print(f"|{'-' * 16}|{'-' * 7}|{'-' * 8}|")
    for name, cases in results.items():
        print(f"| {name:<14} | {len(cases):>5} | {sum(c.passed for c in cases):>6} |")
    for name, cases in results.items():
        for case in cases:
            if args.verbose or not case.passed:
                print(f"  [{'pass' if case.passed else 'FAIL'}] {name}: {case.name} -- {case.note}")


if __name__ == "__main__":
    main()
