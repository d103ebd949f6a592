"""The demo's captioner, trained in a child process while the demo already serves search.

`BackgroundCaptioner.start()` runs `visembed.commands.captioner_child` (lower CPU priority; it
ends with the demo, even a killed one) unless MODEL_DIR/captioner is already complete. A watcher
thread reads the child's metrics files for its progress, times the steps it sees to estimate
when the captioner arrives, and reports both to a `CaptionerSlot` (what `GET /capabilities` and
the page show). When the child has committed the folder, the watcher loads it, calls `on_ready`
(the demo prints its alt texts and dialogue there) and hands the model to the slot: the running
server answers captions from the next request on. `stop()` ends a child still training (its
checkpoints stay: the next demo resumes it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from visembed.checkpoint import MODEL_FILE
from visembed.commands.captioner_child import FINAL, PARTIAL, demo_captioner_config
from visembed.serve.captioner_slot import CaptionerSlot
from visembed.train.captioner_run import ALIGN_SHARE

POLL_S = 2.0
STOP_WAIT_S = 15.0
TAIL_BYTES = 8192


def last_step(metrics: Path) -> int:
    """The last training step logged in a run's metrics.jsonl (0 when none yet)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written, or the cut start of the tail
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record["step"]
    return 0


class StepClock:
    """Steps done over time -> seconds left, from the steps this process has seen happen (none
    before two readings apart: then there is no honest estimate)."""

    def __init__(self, total: int):
        self.total = total
        self.first: tuple[float, int] | None = None

    def eta_s(self, done: int, now: float) -> float | None:
        if self.first is None:
            self.first = (now, done)
            return None
        t0, d0 = self.first
        if done <= d0 or now <= t0:
            return None
        return (self.total - done) * (now - t0) / (done - d0)


class BackgroundCaptioner:
    def __init__(self, model_dir: str | Path, data: str, steps: int | None, *,
                 on_ready: Callable[[object, Path], None] | None = None, log: Path | None = None):
        """`log`: where the child's output goes (None: this process's stdout and stderr)."""
        self.model_dir = Path(model_dir)
        self.data, self.steps, self.on_ready, self.log = data, steps, on_ready, log
        self.final, self.partial = self.model_dir / FINAL, self.model_dir / PARTIAL
        self.total = demo_captioner_config(self.model_dir, data, steps).train.steps  # as the child trains it
        self.align_steps = max(1, round(self.total * ALIGN_SHARE))
        self.slot = CaptionerSlot("the captioner's training is starting (no estimate yet)")
        self.process: subprocess.Popen | None = None
        self.started = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def complete(self) -> bool:
        return (self.final / MODEL_FILE).is_file()

    def start(self) -> "BackgroundCaptioner":
        """Start the child (or, with the captioner already complete, only the watcher)."""
        if not self.complete:
            if self.final.is_dir() and not self.partial.exists():
                os.replace(self.final, self.partial)  # a run of an older demo, killed mid-way: resume it
            command = [sys.executable, "-m", "visembed.commands.captioner_child", str(self.model_dir), self.data,
                       "--parent", str(os.getpid())] + ([f"--steps={self.steps}"] if self.steps is not None else [])
            output = open(self.log, "ab") if self.log is not None else None
            try:
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                                stderr=subprocess.STDOUT if output else None)
            finally:
                if output is not None:
                    output.close()  # the child holds its own descriptor
        self._thread = threading.Thread(target=self._watch, name="captioner-watcher", daemon=True)
        self._thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def steps_done(self) -> int:
        if (self.partial / "align" / MODEL_FILE).is_file():
            align = self.align_steps
        else:
            align = min(last_step(self.partial / "align" / "metrics.jsonl"), self.align_steps)
        return align + min(last_step(self.partial / "metrics.jsonl"), self.total - self.align_steps)

    def _watch(self) -> None:
        clock = StepClock(self.total)
        while self.process is not None and self.process.poll() is None:
            done = self.steps_done()
            eta = clock.eta_s(done, time.monotonic()) if done > 0 else None
            if done == 0:
                detail = "the captioner's training is getting ready (no estimate yet)"
            elif eta is None:
                detail = f"training the captioner: step {done} of {self.total} (no estimate yet)"
            else:
                detail = f"training the captioner: step {done} of {self.total}, about {max(1, round(eta / 60))} min left"
            self.slot.progress(done or None, self.total, eta, detail)
            if self._stopping.wait(POLL_S):
                return
        if self._stopping.is_set():
            return
        code = None if self.process is None else self.process.returncode
        if code not in (None, 0) or not self.complete:
            where = f"; its output: {self.log}" if self.log is not None else ""
            self.slot.failed(f"the captioner's training stopped (exit code {code}){where}")
            print(f"\nThe captioner's training stopped (exit code {code}){where}. "
                  "Search keeps working; rerun the demo to resume the captioner.", flush=True)
            return
        try:
            import visembed

            model = visembed.load(self.final)
            if self.on_ready is not None:
                self.on_ready(model, self.final)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the server keeps serving search
            self.slot.failed(f"the captioner could not be loaded: {exc}")
            print(f"\nThe captioner in {self.final} could not be loaded: {exc}", flush=True)
            return
        self.slot.ready(model)

    def wait(self) -> None:
        """Until the captioner is ready or failed."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """End a child still training (SIGTERM, then SIGKILL) and the watcher."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            print(f"The captioner's training was stopped (checkpoints kept in {self.partial}; "
                  "rerun the demo to resume it).", flush=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_WAIT_S)


__all__ = ["BackgroundCaptioner", "StepClock", "last_step"]
