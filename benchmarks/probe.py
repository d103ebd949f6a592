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
  serve          a real server on loopback: POSTs from other sites' pages (Origin, Sec-Fetch-Site) refused
                 with 403, a body trickled a byte at a time cut at its deadline, data rows naming files
                 outside their data's folder (`../`, absolute) not sent, JSON nested deep or holding a
                 lone surrogate answered 422
  model-folders  truncated / random / empty / oversized-header model.safetensors, broken or
                 wrong-typed config.json, under `visembed eval` and `visembed index build`:
                 non-zero exit, one line on stderr, no traceback
  configs        `visembed train --set KEY=VALUE` with invalid values, and a preset that is a JSON
                 list: non-zero exit, one line naming the key (or the preset file), no traceback
  kill-rebuild   stale-index scenarios: shrunk manifest + changed caption, deletion then rebuild,
                 `index add` killed mid-way then rebuild, `index build` killed mid-way then rerun
  memory         peak RSS of a real `visembed serve` process under 6 concurrent uploads of a
                 ~40-megapixel RGBA PNG (~170 KB): peak growth <= 1 GiB and held growth <= 0.5 GiB
  imports        `hf:` / `openclip:` folders an attacker prepared (malformed and huge sizes, infinite and
                 duplicate JSON keys, shard indexes naming /etc/passwd or ../, pickles, no tokenizer,
                 int8 weights, a crop of another size, symlinks), under `visembed eval`
  tampered       visembed model and captioner folders edited after training (a config larger than its
                 weights, lm/config.json saying llama, garbage or 100,000-deep JSON, /dev/zero configs)
  arguments      values no user means (invalid UTF-8, `{x}` templates, --out under a file, inf, 0 shard
                 sizes, ports out of range, builtin:shapes options, widths of 10^6, no onnxruntime)
  data-files     LLaVA files and manifests with hostile paths (5,000 characters, NUL, lone surrogates,
                 300 `../`): skipped and counted; 100,000-deep JSON: one line
  export-merge   export into the model folder itself or a non-empty folder, stale `.OUT.PID.tmp`
                 folders of dead processes, merging captioners whose LM tokenizers differ
  In the last five, "passed" means a one-line refusal naming the problem (click's usage error for an
  option out of range counts), within 1.5 GB peak RSS under a 4 GiB address-space cap (a memory bomb
  that is not refused fails there, not on the machine).

Everything runs in a temporary folder on a tiny generated manifest and a 2-step `tiny` model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
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


def _exposing_index(work: Path, model: Path) -> tuple[Path, list[str]]:
    """An index of a manifest whose rows name a file beside the data folder (`../`) and one by its
    absolute path: (the index, the ids of those two rows)."""
    private = work / "private-photos"
    private.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), "purple").save(private / "holiday.png")
    data = work / "exposing-data"
    write_manifest(data, 4, prefix="own")
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    rows += [{"id": "up", "image": "../private-photos/holiday.png", "caption": "a purple square", "split": "train"},
             {"id": "absolute", "image": str(private / "holiday.png"), "caption": "a purple square", "split": "train"}]
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = work / "exposing-index"
    built = cli("index", "build", model, "--data", data / "manifest.jsonl", "--out", index, "--quiet", cwd=work)
    if built.returncode != 0:
        raise RuntimeError(f"index build failed: {built.stderr.strip()[-200:]}")
    return index, ["up", "absolute"]


def _trickle(url: str, path: str, seconds: float) -> float:
    """POST a body that announces 1 MB and sends one byte every 0.2 s; how long until the server
    closed the connection (or `seconds`, if it never did)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 1000000\r\n\r\n".encode())
        try:
            while time.monotonic() - started < seconds:
                sock.sendall(b" ")
                sock.settimeout(0.2)
                try:
                    if sock.recv(4096) == b"":
                        break  # closed by the server
                except socket.timeout:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
    return time.monotonic() - started


def probe_serve(work: Path, model: Path, index: Path) -> list[Case]:
    """A real uvicorn server on loopback (as `visembed serve` runs it): foreign origins, trickled
    bodies, files outside the data's folders, deeply nested and surrogate JSON."""
    import httpx

    from visembed.serve.app import create_app, make_server
    from visembed.serve.connection import bind_socket

    cases: list[Case] = []
    exposing, outside = _exposing_index(work, model)
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        server = make_server(create_app(exposing), body_timeout=3.0)
    except TypeError as exc:  # a tree whose server has no body deadline
        cases.append(Case("a trickled body is cut at the body deadline", False, f"no setting: {exc}"[:90]))
        server = make_server(create_app(exposing))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"liked": ["own-1"], "k": 2}
            same = client.post("/recommend", json=body)
            cases.append(Case("a POST from the page's own origin is served", same.status_code == 200, str(same.status_code)))
            for name, headers in [("Origin: https://evil.example", {"origin": "https://evil.example"}),
                                  ("Sec-Fetch-Site: cross-site", {"sec-fetch-site": "cross-site"}),
                                  ("Origin: null (a sandboxed page)", {"origin": "null"})]:
                foreign = client.post("/recommend", json=body, headers=headers)
                cases.append(Case(f"a POST with {name} is refused", foreign.status_code == 403,
                                  f"{foreign.status_code} {foreign.text[:60]}"))
            for item in outside:
                got = client.get(f"/items/{item}/image")
                cases.append(Case(f"an item whose file lies outside the data's folder ({item}) is not sent",
                                  got.status_code == 404 and b"PNG" not in got.content[:8], str(got.status_code)))
            own = client.get("/items/own-1/image")
            cases.append(Case("an item inside the data's folder is still sent", own.status_code == 200, str(own.status_code)))
            for name, raw in [("JSON nested 1,500 deep", "[" * 1500 + "]" * 1500),
                              ("a lone surrogate in JSON", '{"liked": ["\\ud800"]}'),
                              ("JSON nested 100,000 deep", "[" * 100_000 + "]" * 100_000)]:
                got = client.post("/recommend", content=raw.encode(), headers={"content-type": "application/json"})
                cases.append(Case(f"POST /recommend: {name}", got.status_code == 422, f"{got.status_code} {got.text[:60]}"))
        if not any(c.name.startswith("a trickled body") for c in cases):
            took = _trickle(url, "/recommend", 12.0)
            cases.append(Case("a trickled body (a byte every 0.2 s) is cut at the body deadline (3 s)", took < 6.0,
                              f"closed after {took:.1f} s"))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
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

# ---- hostile imports, tampered folders, arguments, data files, export and merge (issue #21) -----

MEMORY_LIMIT = 4 * GiB  # address-space cap of each hostile case (a memory bomb fails there, not on the machine)
MEMORY_BUDGET_KB = 1_500_000  # peak RSS a refused bomb may reach (torch + transformers alone are ~0.6 GB)
_RSS_WRAPPER = ("import atexit, os, resource\n"
                "atexit.register(lambda: open(os.environ['PROBE_RSS'], 'w').write(str(resource.getrusage("
                "resource.RUSAGE_SELF).ru_maxrss)))\n"
                "from visembed.cli import main; main()")


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def hostile_cli(*args, cwd: Path, timeout: float = 120, pythonpath: str | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`visembed ARGS` under an address-space cap; -> (process, its peak RSS in KB, 0 when unknown).
    Arguments may be bytes (invalid UTF-8 reaches the program as the OS passes it)."""
    rss = cwd / f".rss-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": pythonpath or str(TREE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PROBE_RSS": str(rss), "VISEMBED_CACHE": str(cwd / "import-cache")}
    command = [sys.executable, "-c", _RSS_WRAPPER, *(a if isinstance(a, bytes) else str(a) for a in args)]
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, timeout=timeout, preexec_fn=_limit_memory)
        proc = subprocess.CompletedProcess(command, proc.returncode, proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(command, -9, "", f"timed out after {timeout} s")
    peak = int(rss.read_text()) if rss.is_file() else 0
    rss.unlink(missing_ok=True)
    return proc, peak


def usage_error(proc: subprocess.CompletedProcess, must_name: str | None) -> bool:
    """click's own refusal of an option out of its range: exit 2, "Invalid value for" the option."""
    return (proc.returncode == 2 and "Traceback" not in proc.stderr and "Invalid value for" in proc.stderr
            and (must_name is None or must_name in proc.stderr))


def refused(proc_rss, must_name: str | None = None, forbidden: str | None = None) -> tuple[bool, str]:
    """A clean one-line failure (`clean_failure`, or click's usage error) within the memory budget,
    without `forbidden` text."""
    proc, peak = proc_rss
    ok, note = clean_failure(proc, must_name)
    if not ok and usage_error(proc, must_name):
        ok, note = True, [line for line in proc.stderr.splitlines() if "Invalid value" in line][0].strip()[:100]
    if ok and peak > MEMORY_BUDGET_KB:
        return False, f"peak RSS {peak / 1e6:.1f} GB before refusing"
    if ok and forbidden and forbidden in proc.stdout + proc.stderr:
        return False, f"says {forbidden!r}"
    return ok, note


def _edited(source: Path, target: Path, edit) -> Path:
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("checkpoints", "align"))
    edit(target)
    return target


def _json_edit(name: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return edit


def _write(name: str, data: bytes | str):
    def edit(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return edit


def _both(*edits):
    def edit(folder: Path) -> None:
        for one in edits:
            one(folder)
    return edit


def _tiny_hf_clip(folder: Path) -> Path:
    """A random 2-layer transformers CLIPModel folder with its tokenizer and image processor."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                     "pad_token_id": tokenizer.pad_token_id},
                        vision_config={**common, "image_size": 32, "patch_size": 8}, projection_dim=24)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _int8_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if n.endswith("position_embedding.weight"))
    state[name] = state[name].to(torch_dtype("int8"))
    save_file(state, folder / "model.safetensors")


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _pickle_bin(folder: Path) -> None:
    import pickle

    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(print))  # a global: torch's weights_only refuses it


def _sharded(weight_map) -> callable:
    def edit(folder: Path) -> None:
        (folder / "model.safetensors").rename(folder / "shard-1.safetensors")
        index = {"metadata": {}} if weight_map is None else {"weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return edit


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def probe_imports(work: Path, manifest: Path) -> list[Case]:
    """`hf:` and `openclip:` folders an attacker prepared, under `visembed eval` (which converts them)."""
    hf = _tiny_hf_clip(work / "hf-clip")
    tc = lambda key, value: _json_edit("config.json", lambda d: d["text_config"].__setitem__(key, value))  # noqa: E731
    vc = lambda key, value: _json_edit("config.json", lambda d: d["vision_config"].__setitem__(key, value))  # noqa: E731
    hf_cases = {
        "hf: text_config.hidden_size 0": (tc("hidden_size", 0), "hidden_size"),
        "hf: text_config.hidden_size null": (tc("hidden_size", None), "hidden_size"),
        "hf: text_config a list": (_json_edit("config.json", lambda d: d.__setitem__("text_config", [1, 2])), "text_config"),
        "hf: processor_config.json not JSON": (_write("processor_config.json", "{ nope"), "processor_config.json"),
        "hf: processor_config.json a list": (_write("processor_config.json", "[1, 2]"), "processor_config.json"),
        "hf: shard index without weight_map": (_sharded(None), "weight_map"),
        "hf: weight_map names /etc/passwd": (_sharded({"x": "/etc/passwd"}), "/etc/passwd"),
        "hf: weight_map names ../x.safetensors": (_sharded({"x": "../x.safetensors"}), "../x.safetensors"),
        "hf: pytorch_model.bin with a pickled global": (_pickle_bin, "pytorch_model.bin"),
        "hf: vocab_size 3e7 over a small weights file": (tc("vocab_size", 30_000_000), None),
        "hf: vision width 4096 x 8 layers": (_both(vc("hidden_size", 4096), vc("intermediate_size", 16384),
                                                   vc("num_hidden_layers", 8), vc("num_attention_heads", 16)), None),
        "hf: text width 10**12": (tc("hidden_size", 10**12), None),
        "hf: hidden_size 1e400 (infinite JSON number)": (_write("config.json", (hf / "config.json").read_text().replace(
            '"hidden_size": 32', '"hidden_size": 1e400', 1)), "hidden_size"),
        "hf: config.json nested 100,000 deep": (_write("config.json", _nested(100_000)), "config.json"),
        "hf: config.json with model_type twice": (_write("config.json", (hf / "config.json").read_text().replace(
            '"model_type": "clip"', '"model_type": "clip", "model_type": "siglip"', 1)), "model_type"),
        "hf: no tokenizer files": (_no_tokenizer, "tokenizer"),
        "hf: an int8 weight": (_int8_weight, "int8"),
        "hf: crop_size 999 for a 32 px tower": (_json_edit("processor_config.json", lambda d: d["image_processor"].__setitem__(
            "crop_size", {"height": 999, "width": 999})), "999"),
        "hf: model.safetensors a symlink to /etc/passwd": (lambda f: ((f / "model.safetensors").unlink(),
                                                                     (f / "model.safetensors").symlink_to("/etc/passwd")), None),
    }
    oc = FIXTURES / "openclip"
    mc = lambda section, key, value: _json_edit("open_clip_config.json",  # noqa: E731
                                                lambda d: d["model_cfg"][section].__setitem__(key, value))
    openclip_cases = {
        "openclip: vision head_width 0": (mc("vision_cfg", "head_width", 0), "head_width"),
        "openclip: vision_cfg a number": (_json_edit("open_clip_config.json", lambda d: d["model_cfg"].__setitem__(
            "vision_cfg", 7)), "vision_cfg"),
        "openclip: model_cfg a list": (_json_edit("open_clip_config.json", lambda d: d.__setitem__("model_cfg", [1])),
                                       "model_cfg"),
        "openclip: text width a string": (mc("text_cfg", "width", "wide"), "width"),
        "openclip: vision width 4096 x 48 layers": (_both(mc("vision_cfg", "width", 4096), mc("vision_cfg", "layers", 48),
                                                          mc("vision_cfg", "head_width", 64)), None),
        "openclip: vocab_size 3e7": (mc("text_cfg", "vocab_size", 30_000_000), None),
    }
    jobs = []
    for n, (name, (edit, key)) in enumerate(hf_cases.items()):
        jobs.append((name, "hf:" + str(_edited(hf, work / "hostile-hf" / str(n), edit)), key))
    for n, (name, (edit, key)) in enumerate(openclip_cases.items()):
        jobs.append((name, "openclip:" + str(_edited(oc, work / "hostile-openclip" / str(n), edit)), key))

    def run(job):
        return hostile_cli("eval", job[1], "--data", manifest, "--split", "test", cwd=work)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, jobs))
    return [Case(name, *refused(result, key, forbidden="weights_only=False")) for (name, _, key), result in zip(jobs, results)]


FIXTURES = TREE / "tests" / "fixtures"


def _cjk_free_captioner(work: Path, manifest: Path, model: Path) -> Path | None:
    out = work / "captioner"
    if (out / "model.safetensors").is_file():
        return out
    sets = ["model.captioner.vocab_size=300", "model.captioner.width=32", "model.captioner.depth=1",
            "model.captioner.heads=2", "model.captioner.projector_hidden=32", "model.captioner.max_tokens=32",
            "train.batch_size=8", "train.warmup_steps=1"]
    proc = cli("train-captioner", "--vision", model, "--data", manifest, "--out", out, "--steps", "2", "--no-progress",
               *[x for s in sets for x in ("--set", s)], cwd=work, timeout=400)
    return out if proc.returncode == 0 else None


def probe_tampered(work: Path, model: Path, manifest: Path) -> list[Case]:
    """Model folders edited by someone else (a download), under `eval` / `caption`."""
    captioner = _cjk_free_captioner(work, manifest, model)
    image = manifest.parent / "img-1.png"
    model_cases = {
        "config.json nested 100,000 deep": (_write("config.json", _nested(100_000)), "config.json"),
        "config.json with a key twice": (_write("config.json", (model / "config.json").read_text().replace(
            '"model": {', '"model": {"architecture": "captioner", ', 1)), "config.json"),
        "config.json width 1e400": (_json_edit("config.json", lambda d: d["model"]["vision"].__setitem__("width", 1e400)),
                                    "width"),
        "vision width 4096 x 8 layers over the same weights": (_json_edit("config.json", lambda d: d["model"]["vision"].update(
            width=4096, depth=8, heads=16)), None),
        "text vocab_size 3e7 over the same weights": (_json_edit("config.json", lambda d: d["model"]["text"].update(
            vocab_size=30_000_000)), None),
        "garbage tokenizer.json": (_write("tokenizer.json", os.urandom(2000)), "tokenizer.json"),
        "tokenizer.json nested 100,000 deep": (_write("tokenizer.json", _nested(100_000)), "tokenizer.json"),
        "config.json a symlink to /dev/zero": (lambda f: ((f / "config.json").unlink(),
                                                          (f / "config.json").symlink_to("/dev/zero")), "config.json"),
        "model.safetensors an int8 weight": (lambda f: _int8_model(f), "int8"),
    }
    jobs = [(name, ("eval", _edited(model, work / "tampered" / f"m{n}", edit), "--data", manifest, "--split", "test"), key)
            for n, (name, (edit, key)) in enumerate(model_cases.items())]
    if captioner is not None:
        cap_cases = {
            "captioner lm/config.json not JSON": (_write("lm/config.json", "{ no"), "config.json"),
            "captioner lm/config.json says llama (default size)": (_write("lm/config.json", '{"model_type": "llama"}'), None),
            "captioner lm/config.json vocab_size 3e7": (_json_edit("lm/config.json", lambda d: d.__setitem__(
                "vocab_size", 30_000_000)), None),
            "captioner lm/config.json nested 100,000 deep": (_write("lm/config.json", _nested(100_000)), "config.json"),
            "captioner garbage lm/tokenizer.json": (_write("lm/tokenizer.json", os.urandom(3000)), "tokenizer"),
            "captioner hints.json nested 100,000 deep": (_write("hints.json", _nested(100_000)), "hints.json"),
            "captioner hints.json a dict of dicts": (_write("hints.json", '{"en": {"a": 1}}'), "hints.json"),
            "captioner config.json vocabulary names /etc/passwd": (_json_edit("config.json", lambda d: d["model"][
                "captioner"].__setitem__("vocabulary", ["/etc/passwd"])), "vocabulary"),
            "captioner config.json vocabulary emoji x 1,000,000": (_json_edit("config.json", lambda d: d["model"][
                "captioner"].__setitem__("vocabulary", ["emoji"] * 1_000_000)), "vocabulary"),
        }
        jobs += [(name, ("caption", _edited(captioner, work / "tampered" / f"c{n}", edit), image), key)
                 for n, (name, (edit, key)) in enumerate(cap_cases.items())]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: hostile_cli(*job[1], cwd=work), jobs))
    cases = [Case(name, *refused(result, key)) for (name, _, key), result in zip(jobs, results)]
    if captioner is None:
        cases.append(Case("a probe captioner trains", False, "train-captioner failed"))
    return cases


def _int8_model(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if n.endswith("pos_embed") or "pos" in n)
    state[name] = (state[name] * 100).to(torch_dtype("int8"))
    save_file(state, folder / "model.safetensors")


def probe_arguments(work: Path, model: Path, manifest: Path, index: Path) -> list[Case]:
    """Values no user means: each must be one line naming the option (click's usage error counts)."""
    captioner = _cjk_free_captioner(work, manifest, model) or work / "captioner"
    a_file = work / "a-file.txt"
    a_file.write_text("x")
    under = a_file / "out"
    bad_utf8 = b"a red \xff\xfe blob"
    no_onnx = work / "no-onnx"
    no_onnx.mkdir(exist_ok=True)
    (no_onnx / "onnxruntime.py").write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n")
    train = ("train", "--data", manifest, "--preset", "tiny", "--steps", "1", "--no-progress")
    jobs = [
        ("train --init CAPTIONER", (*train, "--init", captioner, "--out", work / "args-out" / "init-cap"), "--init", None),
        ("train --out under a file", (*train, "--out", under), "a-file.txt", None),
        ("index build --out under a file", ("index", "build", model, "--data", manifest, "--out", under, "--quiet"),
         "a-file.txt", None),
        ("embed --out under a file", ("embed", model, "--data", manifest, "--out", under), "a-file.txt", None),
        ("demo --out under a file", ("demo", "--out", under, "--no-serve"), "a-file.txt", None),
        ("export --out under a file", ("export", model, "--format", "hf", "--out", under), "a-file.txt", None),
        ("merge --out under a file", ("merge", model, model, "--out", under), "a-file.txt", None),
        ("search with invalid UTF-8", ("search", index, bad_utf8), "UTF-8", None),
        ("chat with invalid UTF-8", ("chat", captioner, "--image", manifest.parent / "img-1.png", "--message", bad_utf8),
         "UTF-8", None),
        ("eval --template with invalid UTF-8", ("eval", model, "--data", manifest, "--template", b"a \xff {}"), "UTF-8", None),
        ("eval --template '{x}'", ("eval", model, "--data", manifest, "--template", "{x}"), "--template", None),
        ("eval --template without {}", ("eval", model, "--data", manifest, "--template", "a photo"), "--template", None),
        ("serve --max-upload-mb inf", ("serve", index, "--max-upload-mb", "inf"), "--max-upload-mb", None),
        ("serve --max-upload-mb nan", ("serve", index, "--max-upload-mb", "nan"), "--max-upload-mb", None),
        ("index build --shard-size 0", ("index", "build", model, "--data", manifest, "--out", work / "args-out" / "ix0",
                                        "--shard-size", "0", "--quiet"), "--shard-size", None),
        ("index add --shard-size 0", ("index", "add", index, "--data", manifest, "--shard-size", "0"), "--shard-size", None),
        ("builtin:shapes?n=abc", (*train[:1], "--data", "builtin:shapes?n=abc", *train[3:], "--out",
                                  work / "args-out" / "nabc"), "n", None),
        ("builtin:shapes?size=0", (*train[:1], "--data", "builtin:shapes?size=0", *train[3:], "--out",
                                   work / "args-out" / "size0"), "size", None),
        ("builtin:shapes?n=-5", (*train[:1], "--data", "builtin:shapes?n=-5", *train[3:], "--out",
                                 work / "args-out" / "nneg"), "n", None),
        ("--set model.vision.width=1000000", (*train, "--set", "model.vision.width=1000000", "--out",
                                              work / "args-out" / "wide"), "width", None),
        ("--set model.text.vocab_size=1000000000", (*train, "--set", "model.text.vocab_size=1000000000", "--out",
                                                    work / "args-out" / "vocab"), "vocab_size", None),
        ("export --format onnx without onnxruntime", ("export", model, "--format", "onnx", "--out",
                                                      work / "args-out" / "onnx"), "onnx", f"{no_onnx}:{TREE}"),
        ("demo --port -1 (fails before training)", ("demo", "--out", work / "args-out" / "demo", "--port", "-1"),
         "--port", None),
        ("demo --port 70000", ("demo", "--out", work / "args-out" / "demo2", "--port", "70000"), "--port", None),
        ("merge --alpha nan", ("merge", model, model, "--alpha", "nan", "--out", work / "args-out" / "merged"), "alpha",
         None),
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: hostile_cli(*job[1], cwd=work, timeout=90, pythonpath=job[3]), jobs))
    return [Case(name, *refused(result, key)) for (name, _, key, _), result in zip(jobs, results)]


def skipped_count(text: str) -> int | None:
    """The items a command's summary says it skipped: "skipped 2 (...)" or "skipped: a=0, b=1"."""
    line = next((line for line in text.splitlines() if "skipped" in line), None)
    if line is None:
        return None
    tail = line[line.index("skipped"):]
    total = re.match(r"skipped (\d+)", tail)
    return int(total.group(1)) if total else sum(int(n) for n in re.findall(r"=(\d+)", tail))


def probe_data_files(work: Path, model: Path, manifest: Path) -> list[Case]:
    """Data files with hostile entries: bad paths are skipped and counted, a broken file is one line."""
    folder = manifest.parent
    good = [{"image": f"img-{i}.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                         {"from": "gpt", "value": f"a blob {i}"}]} for i in range(8)]
    bad_paths = {"a 5,000-character path": "x" * 5000 + ".png", "a NUL byte in a path": "img-1\x00.png",
                 "a lone surrogate in a path": "img-\ud800.png", "a path through a file": "img-1.png/x.png",
                 "a 300-level ../ path": "../" * 300 + "etc/passwd"}
    cases = []
    for n, (name, path) in enumerate(bad_paths.items()):
        entry = {**good[0], "image": path}
        llava = folder / f"hostile-{n}.json"
        llava.write_text(json.dumps([*good, entry]))
        rows = [json.dumps({"image": f"img-{i}.png", "caption": f"blob {i}"}) for i in range(8)]
        rows.append(json.dumps({"image": path, "caption": "bad"}))
        jsonl = folder / f"hostile-{n}.jsonl"
        jsonl.write_text("\n".join(rows) + "\n")
        for kind, data in (("LLaVA", llava), ("manifest", jsonl)):
            proc, _ = hostile_cli("index", "build", model, "--data", data, "--out", work / "data-index" / f"{kind}{n}",
                                  cwd=work)
            text = proc.stdout + proc.stderr
            ok = proc.returncode == 0 and "Traceback" not in text and skipped_count(text) == 1
            cases.append(Case(f"{kind}: {name}: skipped and counted", ok,
                              (text.strip().splitlines() or [""])[-1][:100]))
    nested = folder / "nested.json"
    nested.write_text(_nested(100_000))
    deep_entry = folder / "deep-entry.json"
    deep_entry.write_text("[" + json.dumps(good[0]) + ", {\"conversations\": " + _nested(100_000) + "}]")
    for name, path in (("LLaVA JSON nested 100,000 deep", nested), ("LLaVA entry nested 100,000 deep", deep_entry)):
        cases.append(Case(name, *refused(hostile_cli("index", "build", model, "--data", path, "--out",
                                                     work / "data-index" / path.stem, cwd=work), path.name)))
    return cases


def probe_export_merge(work: Path, model: Path, manifest: Path) -> list[Case]:
    """Export and merge must never write over the source, into a non-empty folder, or leave litter."""
    import shutil

    cases = []
    source = work / "export-source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(model, source, ignore=shutil.ignore_patterns("checkpoints"))
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    result = hostile_cli("export", source, "--format", "onnx", "--out", source, cwd=work)
    after = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    ok, note = refused(result, "--out")
    cases.append(Case("export --format onnx --out the model folder itself", ok and before == after,
                      note if before == after else "the model folder was changed"))
    full = work / "full-folder"
    full.mkdir(exist_ok=True)
    (full / "notes.txt").write_text("mine")
    for fmt in ("onnx", "hf"):
        result = hostile_cli("export", source, "--format", fmt, "--out", full, cwd=work)
        ok, note = refused(result, "full-folder")
        cases.append(Case(f"export --format {fmt} into a non-empty folder", ok and (full / "notes.txt").read_text() == "mine"
                          and len(list(full.iterdir())) == 1, note))
    stale = work / ".exported.999999999.deadbeef.tmp"
    stale.mkdir(exist_ok=True)
    (stale / "half.onnx").write_bytes(b"x" * 100)
    result, _ = hostile_cli("export", source, "--format", "hf", "--out", work / "exported", cwd=work)
    cases.append(Case("export removes a stale .OUT.PID.tmp of a dead process", result.returncode == 0 and not stale.exists(),
                      f"exit {result.returncode}, stale {'left' if stale.exists() else 'removed'}"))
    stale = work / ".merged.999999999.deadbeef.tmp"
    stale.mkdir(exist_ok=True)
    result, _ = hostile_cli("merge", source, source, "--out", work / "merged", cwd=work)
    cases.append(Case("merge removes a stale .OUT.PID.tmp of a dead process", result.returncode == 0 and not stale.exists(),
                      f"exit {result.returncode}, stale {'left' if stale.exists() else 'removed'}"))
    captioner = _cjk_free_captioner(work, manifest, model)
    if captioner is not None:
        other = _edited(captioner, work / "captioner-other-lm-tokenizer", _json_edit(
            "lm/tokenizer.json", lambda d: d["model"]["vocab"].__setitem__("zzzz", max(d["model"]["vocab"].values()) + 1)))
        result = hostile_cli("merge", captioner, other, "--out", work / "merged-captioners", cwd=work)
        cases.append(Case("merge of captioners with different LM tokenizers", *refused(result, "tokenizer")))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated categories (default: all)")
    parser.add_argument("--verbose", action="store_true", help="list every case, not only the table")
    parser.add_argument("--smoke", action="store_true", help="the http category alone (as --only http): does it run")
    args = parser.parse_args()
    wanted = [c for c in ("http" if args.smoke else args.only).split(",") if c] or ["http", "serve", "model-folders", "configs",
                                                                                     "kill-rebuild", "memory", "imports", "tampered",
                                                                                     "arguments", "data-files",
                                                                                     "export-merge"]

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
                "serve": lambda: probe_serve(work, model, index),
                "model-folders": lambda: probe_model_folders(work, model, manifest),
                "configs": lambda: probe_configs(work, manifest),
                "kill-rebuild": lambda: probe_kill_rebuild(work, model),
                "memory": lambda: probe_memory(work, index),
                "imports": lambda: probe_imports(work, manifest),
                "tampered": lambda: probe_tampered(work, model, manifest),
                "arguments": lambda: probe_arguments(work, model, manifest, index),
                "data-files": lambda: probe_data_files(work, model, manifest),
                "export-merge": lambda: probe_export_merge(work, model, manifest)}
        for name in wanted:
            try:
                results[name] = runs[name]()
            except Exception as exc:  # a probe that cannot run is a finding too
                results[name] = [Case(f"{name} probe itself", False, f"{type(exc).__name__}: {exc}"[:150])]
            cases = results[name]  # as each category ends (a long run cut short keeps what it found)
            print(f"[{name}: {sum(c.passed for c in cases)}/{len(cases)} passed, {time.monotonic() - started:.0f} s]",
                  file=sys.stderr, flush=True)

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
