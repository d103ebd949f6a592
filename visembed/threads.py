"""How many CPU threads torch takes: all the cores this process may use, less the ones busy elsewhere.

torch starts one OpenMP thread per core and every parallel operation waits for all of them. On a
machine where another process keeps a core busy, the thread that shares that core gets half of it
and the others wait at each barrier: measured on 2 cores (benchmarks/threads.py), a small training
step ran 3.3-4.0x slower beside one busy single-threaded process, not the 2x a fair share explains.
With one thread fewer the step keeps the free core to itself.

So the `visembed` command decides, before torch loads (`configure_threads`, called by `cli.main`):
the cores in its affinity mask, less the cores other processes are using right now (from the idle
time the kernel counts in /proc/stat over a quarter of a second; the one-minute load average where
there is no /proc), at least one. Alone, that is every core, as torch's default. `--threads N`
(or VISEMBED_THREADS=N) fixes the count; `auto` is the default. OMP_NUM_THREADS set by the caller
(torchrun sets 1 per worker) is kept. The choice is made once, at start: a process started later
beside a running one decides for itself.
"""

from __future__ import annotations

import os
import time

ENV = "VISEMBED_THREADS"
_CHOSEN = "VISEMBED_THREADS_CHOSEN"  # marks an OMP_NUM_THREADS this module set (a child decides again)
SAMPLE_SECONDS = 0.25


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
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return (after[0] - before[0]) / total * (os.cpu_count() or 1)


def auto_threads() -> int:
    """The usable cores less those busy elsewhere (rounded), at least 1."""
    cores = usable_cores()
    return max(1, min(cores, round(cores - cores_busy_elsewhere())))


def parse_threads(value: str | int | None) -> int | None:
    """"auto" / None / "" -> None (decide); a positive count -> it; anything else: ValueError."""
    if value is None or str(value).strip().lower() in ("", "auto"):
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--threads / {ENV} must be a positive number of threads or auto, not {value!r}")
    return count


def configure_threads(value: str | int | None = None) -> int:
    """Set OMP_NUM_THREADS (read when torch loads) for this process: `value` (or VISEMBED_THREADS)
    when given, else kept as the caller set it, else `auto_threads()`. -> the count. Call it before
    torch is imported."""
    fixed = parse_threads(value if value is not None else os.environ.get(ENV))
    given = os.environ.get("OMP_NUM_THREADS")
    if fixed is None and given and os.environ.get(_CHOSEN) != given:
        return int(given) if given.strip().isdigit() and int(given) > 0 else usable_cores()  # the caller's (torchrun's)
    count = fixed if fixed is not None else auto_threads()
    os.environ["OMP_NUM_THREADS"] = str(count)
    os.environ[_CHOSEN] = str(count)
    return count
