"""Files written so that a crash never leaves half of one: write, fsync, rename.

Readers see the old file or the new one. results.json, run.json, the checkpoints'
small files and every cache marker are written this way."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename: readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def finite(value):
    """value with every NaN or infinity replaced by None, so that results.json is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, value, indent: int | None = None) -> None:
    """value as valid JSON (NaN and infinities as null), written atomically."""
    atomic_write_text(path, json.dumps(finite(value), indent=indent, allow_nan=False, default=str) + "\n")
