"""The loop of a benchmark that runs one run.py command per row: a row with a results.json is
read, not rerun; a row whose run was stopped continues from its last checkpoint (`run.py
--resume`); rows run one after the other, each command printed."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_rows(rows: list[tuple[str, list[str], Path]], only: list[str] | None) -> list[tuple[str, dict]]:
    """rows: (name, run.py's arguments but --out, out folder). Runs the rows not done yet (only:
    those named, None: all) and returns (name, results) of every row with a results.json."""
    done = []
    for name, arguments, out in rows:
        out = Path(out).resolve()
        if not (out / "results.json").is_file() and (only is None or name in only):
            resumable = (out / "checkpoints" / "LATEST").is_file()
            command = ["run.py", *(["--resume", str(out)] if resumable else [*arguments, "--out", str(out)])]
            print("$", shlex.join(command), flush=True)
            subprocess.run([sys.executable, *command, "--no-progress"], check=True, cwd=ROOT)
        if (out / "results.json").is_file():
            done.append((name, json.loads((out / "results.json").read_text())))
    return done
