"""A run's files: written so that a crash never leaves half of one (write, fsync,
rename: readers see the old file or the new one), and its inputs pinned by their
content hashes so that a resumed run can tell whether they changed."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from .errors import UserError


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


# Every input file a run reads (TOFU's files, your own, the probe text, the checkpoint), in the order
# read: run.json pins each one by its content hash, and --resume refuses a run whose inputs changed.
INPUTS: dict[str, None] = {}


def record_input(path) -> None:
    path = Path(path).resolve()
    if not any(part.startswith(".tmp-") for part in path.parts):  # not a cache being built (build_once)
        INPUTS[str(path)] = None


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pinned_inputs() -> dict[str, str]:
    """{absolute path: sha256} of every input recorded so far."""
    return {path: sha256(path) for path in INPUTS}


def check_pinned(pinned: dict[str, str], run_file: Path) -> None:
    """One sentence for the first input that vanished or changed since run_file pinned it."""
    for path, digest in pinned.items():
        if not Path(path).is_file():
            raise UserError(f"{path}, an input of the run that {run_file} describes, no longer exists; --resume "
                            f"continues a run only on the inputs it started with.")
        if sha256(path) != digest:
            raise UserError(f"{path} changed since the run that {run_file} describes started; --resume continues "
                            f"a run only on the inputs it started with (start a new run with another --out).")


def cache_root() -> Path:
    """Where pmc_min keeps what it builds or converts ($PMC_MIN_CACHE, else ~/.cache/pmc_min)."""
    return Path(os.environ.get("PMC_MIN_CACHE") or Path.home() / ".cache" / "pmc_min")


def build_once(folder: Path, build) -> Path:
    """folder, made by build(tmp) the first time it is asked for: built in a temporary
    sibling folder, marked READY there, then renamed into place. A build that dies
    leaves no folder that looks finished; the next call starts it over. Two processes
    that ask at once take turns (a lock beside the folder): the second finds it built."""
    folder = Path(folder)
    if (folder / "READY").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_name(f".{folder.name}.lock"), "a")
    except OSError as e:
        raise UserError(f"The cache folder {folder.parent} cannot be written ({e.strerror}); set PMC_MIN_CACHE to a "
                        f"writable folder.") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed process ends
        if (folder / "READY").is_file():
            return folder
        tmp = folder.with_name(f".tmp-{folder.name}")
        for stale in (tmp, folder):
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
        except BaseException:  # a build that fails (or is stopped) leaves nothing half-built behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / "READY").write_text("ok\n")
        os.replace(tmp, folder)
    return folder


def parameter_count(folder: Path) -> int:
    """How many numbers the folder's safetensors files hold, from their headers alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e}); download it again.") from None
    return total
