"""run.py, stopped by a signal at a point the test chooses rather than by the clock: just
before optimizer step K (counted from 1 in this process), however loaded the machine.

    python tests/killed_run.py K run.py's arguments ...          # SIGKILL
    python tests/killed_run.py K:INT run.py's arguments ...      # SIGINT, as Ctrl-C sends it
    torchrun --nproc-per-node 2 tests/killed_run.py K ...        # every rank kills itself at the same step
"""

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pmc_min.engine import Engine  # noqa: E402

step, _, name = sys.argv[1].partition(":")
kill_at, sent, steps = int(step), getattr(signal, f"SIG{name or 'KILL'}"), []
if sent == signal.SIGINT:  # as a terminal's Ctrl-C finds it, even when this runs as a background job, which
    signal.signal(signal.SIGINT, signal.default_int_handler)  # starts with SIGINT ignored
real_step = Engine.step


def stopping_step(self):
    steps.append(1)
    if len(steps) == kill_at:
        os.kill(os.getpid(), sent)
    real_step(self)


Engine.step = stopping_step
sys.argv = [str(ROOT / "run.py"), *sys.argv[2:]]
runpy.run_path(str(ROOT / "run.py"), run_name="__main__")  # run.py as a script: its own exit codes and messages
