"""Crash-safe training checkpoints, so a long run resumes where it stopped.

After every epoch (or every k-th) the run writes `<out>/checkpoints/epoch-NNNN/`:
the model in HF's layout, `trainer.pt` (optimizer and schedule states, NPO's
reference log-probs; tensors and plain values only, read back with
`torch.load(weights_only=True)`), and `state.json` (the epoch, the
sampling-order RNG, PMC's y0 and best-so-far cache, the curves). Each
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
from .pmc import BestSoFar
from .train import TrainingState


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


def _json_state(state: TrainingState) -> dict:
    return {"epoch": state.epoch, "step": state.step, "curves": state.curves, "y0": state.y0,
            "rng": [state.rng[0], list(state.rng[1]), state.rng[2]],
            "cache_answers": {str(k): v for k, v in state.cache.answers.items()},
            "cache_scores": {str(k): v for k, v in state.cache.scores.items()}}


def save_state(out: Path, model, tokenizer, state: TrainingState, keep: int = 1) -> Path:
    """Write epoch state.epoch's checkpoint atomically and point LATEST at it (under torchrun:
    every rank calls this)."""
    root = Path(out) / "checkpoints"
    name = f"epoch-{state.epoch:04d}"
    tmp, final = root / f".tmp-{name}", root / name
    engine = state.engine
    if distributed.main_rank():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if engine is not None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        distributed.barrier()
        weights, optimizer = get_state_dict(engine.module, engine.opt)
        dcp.save({"model": weights, "optimizer": optimizer}, checkpoint_id=str(tmp / "sharded"))
        distributed.barrier()
    if distributed.main_rank():
        save(model, tokenizer, tmp)
        torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "ref_logprob": state.ref_logprob},
                   tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps(_json_state(state)) + "\n")
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


def load_sharded(folder: str, engine) -> None:
    """Read a torchrun checkpoint's training weights and AdamW states into engine's module and
    optimizer, resharded to this run's ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    weights, optimizer = get_state_dict(engine.module, engine.opt)
    saved = {"model": weights, "optimizer": optimizer}
    dcp.load(saved, checkpoint_id=folder)
    set_state_dict(engine.module, engine.opt, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"])


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
    state = TrainingState(epoch=saved["epoch"], step=saved["step"], curves=saved["curves"], y0=saved["y0"],
                          rng=(saved["rng"][0], tuple(saved["rng"][1]), saved["rng"][2]),
                          cache=BestSoFar({int(k): v for k, v in saved["cache_answers"].items()},
                                          {int(k): v for k, v in saved["cache_scores"].items()}),
                          sharded=str(Path(path) / "sharded") if (Path(path) / "sharded").is_dir() else None,
                          **trainer)
    return model, tokenizer, state
