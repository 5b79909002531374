"""Crash-safe training checkpoints, so a long run resumes where it stopped.

After every epoch (or every k-th) the run writes `<out>/checkpoints/epoch-NNNN/`:
the model in HF's layout, `trainer.pt` (optimizer and schedule states, the
method's tensors such as NPO's reference log-probs, gradients carried over the
epoch's end; tensors and plain values only, read back with
`torch.load(weights_only=True)`), and `state.json` (the epoch and step, the
sampling-order RNG, the method's plain state such as PMC's y0 and best-so-far
cache, the curves). Each
checkpoint is written under a temporary name, fsynced, and renamed into
place; only then does `<out>/checkpoints/LATEST` (itself replaced
atomically) point to it. A crash mid-write leaves the previous checkpoint
as the one resumed from.

Under torchrun (DDP or FSDP2) the training weights and AdamW states are written
by every rank with torch.distributed.checkpoint into `sharded/` (each rank its
shards, rank 0 the metadata), and rank 0 writes the rest, the plain model in
HF's layout included; a resumed run reads them back into whatever sharding it
has.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from . import distributed
from .checkpoint import load, save
from .errors import UserError
from .files import atomic_write_text, fsync_path
from .train import TrainingState


def split_method_state(method: dict) -> tuple[dict, dict]:
    """(plain values for state.json, tensors for trainer.pt) of a method's state."""
    tensors = {k: v for k, v in method.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in method.items() if k not in tensors}, tensors


def save_state(out: Path, model, tokenizer, state: TrainingState, engine=None, keep: int = 1) -> Path:
    """Write epoch state.epoch's checkpoint atomically and point LATEST at it (under torchrun:
    every rank calls this, with the engine whose sharded states it writes)."""
    root = Path(out) / "checkpoints"
    name = f"epoch-{state.epoch:04d}"
    tmp, final = root / f".tmp-{name}", root / name
    if distributed.main_rank():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if engine is not None and engine.wrapped:
        distributed.barrier()
        engine.save_sharded(tmp / "sharded")
        distributed.barrier()
    if distributed.main_rank():
        save(model, tokenizer, tmp)
        plain, tensors = split_method_state(state.method)
        torch.save({"engine": state.engine, "method": tensors, "pending": state.pending}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({
            "epoch": state.epoch, "step": state.step, "micro": state.micro, "curves": state.curves,
            "rng": [state.rng[0], list(state.rng[1]), state.rng[2]], "method": plain}) + "\n")
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
        atomic_write_text(root / "LATEST", name + "\n")
        older = sorted(p for p in root.glob("epoch-*") if p.name != name)
        for old in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old)
    distributed.barrier()
    return final


def latest_state(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise UserError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over.")
    return path


def load_state(path: Path, device="cpu"):
    """(model, tokenizer, TrainingState) to pass to train.unlearn(resume=state)."""
    model, tokenizer = load(path, device=device)
    saved = json.loads((Path(path) / "state.json").read_text())
    trainer = torch.load(Path(path) / "trainer.pt", map_location=device, weights_only=True)
    state = TrainingState(epoch=saved["epoch"], step=saved["step"], micro=saved["micro"], curves=saved["curves"],
                          rng=(saved["rng"][0], tuple(saved["rng"][1]), saved["rng"][2]),
                          engine=trainer["engine"],
                          method={**saved["method"], **trainer["method"]}, pending=trainer["pending"],
                          sharded=str(Path(path) / "sharded") if (Path(path) / "sharded").is_dir() else None)
    return model, tokenizer, state
