"""`metrics.jsonl` in the run folder: one JSON object per log line, appended and flushed at once."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path, resume_step: int | None = None):
        """With `resume_step`, lines logged after that step by the interrupted run are dropped:
        the resumed run logs those steps again."""
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", float("inf"))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a line cut by the kill
