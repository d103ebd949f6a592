"""`metrics.jsonl` in the run folder: one JSON object per log line, appended and flushed at once."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path, resume_step: int | None = None):
        """A fresh log, or with `resume_step` the interrupted run's log up to that step: the resumed
        run logs the later steps (and the final line) again."""
        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _before(line, resume_step)]
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _before(line: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False  # a line cut short by the kill
    return isinstance(record, dict) and not record.get("final") and record.get("step", step + 1) <= step
