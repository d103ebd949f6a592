"""The process that trains the demo's captioner while the demo serves search (`BackgroundCaptioner`
starts it): `python -m visembed.commands.captioner_child MODEL_DIR DATA --parent PID [--steps N]`.

It runs the captioner training the demo ran in-process before (both stages, resumed where a run
left it) into MODEL_DIR/captioner.partial, and moves that folder to MODEL_DIR/captioner only when
training has finished: a `captioner` folder is always a complete one. It lowers its own CPU
priority first, so searches in the serving process keep the cores they need, and it ends when
the demo does, even when the demo is killed (SIGKILL): Linux's parent-death signal where there
is one, and a watchdog on the parent pid everywhere.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

NICENESS = 10
PARTIAL = "captioner.partial"
FINAL = "captioner"
PR_SET_PDEATHSIG = 1


def end_with_parent(parent: int) -> None:
    """Die with the demo: SIGTERM on the parent's death (Linux), and a watchdog thread that exits
    as soon as this process has been handed to another parent (the demo is gone)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except OSError:
            pass  # the watchdog below still ends it
    if os.getppid() != parent:  # the demo died before the signal was armed
        os._exit(3)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def demo_captioner_config(model_dir: Path, data: str, steps: int | None):
    """The config of the demo's captioner (what this process trains; the parent reads its step count)."""
    from visembed.train.captioner_run import captioner_config

    # the CLDR emoji names as hints besides the training captions: on held-out emoji (val) they named
    # more and scored higher than the training captions alone (docs/captions.md)
    return captioner_config(model_dir, data, steps=steps, overrides=['model.captioner.vocabulary=["emoji"]'])


def train(model_dir: Path, data: str, steps: int | None) -> Path:
    """Train (or resume) the captioner into MODEL_DIR/captioner.partial, then commit it."""
    from visembed.atomic import replace_dir
    from visembed.train.captioner_run import train_captioner

    partial, final = model_dir / PARTIAL, model_dir / FINAL
    train_captioner(demo_captioner_config(model_dir, data, steps), partial, stage="both", resume=partial.is_dir())
    replace_dir(partial, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the demo's dual encoder folder")
    parser.add_argument("data", help="the data the captioner trains on")
    parser.add_argument("--parent", type=int, required=True, help="pid of the demo: this process ends with it")
    parser.add_argument("--steps", type=int, default=None, help="captioner training steps (default: its own)")
    args = parser.parse_args(argv)
    end_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the demo stops this one itself
    os.nice(NICENESS)
    train(args.model_dir, args.data, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
