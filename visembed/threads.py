"""Sharing the machine: how torch's OpenMP threads wait, and how many there are.

torch starts one OpenMP thread per core and every parallel operation ends at a barrier where the
threads wait for each other; libgomp's default is to spin there for a while before sleeping. Beside
a process that keeps one core busy, the thread sharing that core is descheduled for whole time
slices while its partner spins: a small training step ran 3.3-4.0x slower on 2 cores, not the 2x a
fair share explains (`benchmarks/threads.py` measures it). Waiting passively (OMP_WAIT_POLICY=PASSIVE:
sleep at once) gives the core back, but costs a wake-up at every barrier, 11-26 % of a small step
on a quiet machine.

So `visembed` (`cli.py`, before torch loads) looks at the machine first: when other processes keep
at least half a core busy (idle time counted by the kernel in /proc/stat over a quarter of a second;
the one-minute load average where there is no /proc), it sets OMP_WAIT_POLICY=PASSIVE; on a quiet
machine it changes nothing. The thread count stays torch's (every usable core): the number of
threads changes how sums are split, so it changes trained weights in their last bits, and a run
resumed with another count would not end where an uninterrupted one does. The wait policy changes
only when a thread sleeps, never what it computes.

`--threads N` / VISEMBED_THREADS=N fixes the count (resume such a run with the same N); `auto`, the
default, is the above. A caller's own OMP_WAIT_POLICY or OMP_NUM_THREADS (torchrun sets 1 per
worker) is kept. The choice is made once, at start: OpenMP reads it when torch loads. A process
started by visembed decides again for itself.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ENV = "VISEMBED_THREADS"
_OURS = "VISEMBED_THREADS_SET"  # "name=value,...": what this module set, so that a child decides again
SAMPLE_SECONDS = 0.25
BUSY_CORES = 0.5  # cores busy elsewhere from which threads wait passively


@dataclass
class ThreadChoice:
    threads: int | None  # OMP_NUM_THREADS set here (None: torch's default or the caller's)
    wait_policy: str | None  # OMP_WAIT_POLICY set here (None: libgomp's default or the caller's)
    busy_elsewhere: float | None  # cores other processes kept busy when looked at (None: not looked)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time since boot from /proc/stat's first line, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def cores_busy_elsewhere(seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores other processes keep busy now (this process sleeps while it looks)."""
    before = _busy_jiffies()
    if before is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(seconds)
    after = _busy_jiffies()
    total = after[1] - before[1] if after is not None else 0
    if total <= 0:
        return 0.0
    return (after[0] - before[0]) / total * (os.cpu_count() or 1)


def parse_threads(value: str | int | None) -> int | None:
    """"auto" / None / "" -> None (decide); a positive count -> it; anything else: ValueError."""
    if value is None or str(value).strip().lower() in ("", "auto"):
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--threads / {ENV} must be a positive number of threads or auto, not {value!r}")
    return int(text)


def configure_threads(value: str | int | None = None) -> ThreadChoice:
    """Set OMP_NUM_THREADS / OMP_WAIT_POLICY for this process as the module docstring says: `value`
    (else VISEMBED_THREADS) a count or "auto". Call it before torch is imported."""
    fixed = parse_threads(value if value is not None else os.environ.get(ENV))
    ours = dict(item.split("=", 1) for item in os.environ.get(_OURS, "").split(",") if "=" in item)
    for name, set_here in ours.items():  # a parent visembed's choice: decide again
        if os.environ.get(name) == set_here:
            del os.environ[name]
    choice = ThreadChoice(None, None, None)
    if fixed is not None:
        choice.threads = fixed
        os.environ["OMP_NUM_THREADS"] = str(fixed)
    if "OMP_WAIT_POLICY" not in os.environ:
        choice.busy_elsewhere = cores_busy_elsewhere()
        if choice.busy_elsewhere >= BUSY_CORES:
            os.environ["OMP_WAIT_POLICY"] = choice.wait_policy = "PASSIVE"
    os.environ[_OURS] = ",".join(f"{name}={value}" for name, value in
                                 (("OMP_NUM_THREADS", choice.threads), ("OMP_WAIT_POLICY", choice.wait_policy)) if value)
    return choice
