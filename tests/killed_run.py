"""run.py, killed with SIGKILL at a point the test chooses rather than by the clock: just
before optimizer step K (counted from 1 in this process), however loaded the machine.

    python tests/killed_run.py K run.py's arguments ...
    torchrun --nproc-per-node 2 tests/killed_run.py K ...    # every rank kills itself at the same step
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from pmc_min.engine import Engine  # noqa: E402

kill_at, steps = int(sys.argv[1]), []
real_step = Engine.step


def step(self):
    steps.append(1)
    if len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_step(self)


Engine.step = step
sys.exit(run.main(sys.argv[2:]))
