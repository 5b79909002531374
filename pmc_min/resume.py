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

from . import distributed, lora
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
        try:
            write_checkpoint(tmp, model, tokenizer, state)
        except BaseException:  # a full disk, Ctrl-C: the previous checkpoint stays in force, and its space free
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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


def write_checkpoint(tmp: Path, model, tokenizer, state: TrainingState) -> None:
    """The checkpoint's files, fsynced, in the temporary folder that save_state renames."""
    if lora.attached(model):  # the frozen base in HF's layout, the adapter beside it
        save(model, tokenizer, tmp, state=lora.base_state(model))
        lora.save_adapter(model, tmp)
    else:
        save(model, tokenizer, tmp)
    plain, tensors = split_method_state(state.method)
    torch_save({"engine": state.engine, "method": tensors, "pending": state.pending}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({
        "epoch": state.epoch, "step": state.step, "micro": state.micro, "curves": state.curves,
        "rng": [state.rng[0], list(state.rng[1]), state.rng[2]], "method": plain}) + "\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_path(f)
    fsync_path(tmp)


def torch_save(value, path: Path) -> None:
    """torch.save, with a failed write (a full disk) raised as the OSError it is, not as the
    RuntimeError that torch's zip writer makes of it."""
    with open(path, "wb") as f:
        try:
            torch.save(value, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def latest_state(out: Path) -> Path | None:
    """The checkpoint LATEST names (None: no checkpoint was written); one sentence when LATEST
    is damaged or names a checkpoint that is not there."""
    root = Path(out) / "checkpoints"
    pointer = root / "LATEST"
    if not pointer.is_file():
        if any(root.glob("epoch-*")):
            raise UserError(f"{pointer} is missing, though {root} holds checkpoints; write the name of the one "
                            f"to resume from into it (e.g. {sorted(root.glob('epoch-*'))[-1].name}).")
        return None
    name = pointer.read_text(errors="replace").strip()
    path = root / name
    if not name.startswith("epoch-") or not path.is_dir():
        raise UserError(f"{pointer} names {name!r}, which is not a checkpoint in {root}; write the name of one "
                        f"into it, or delete {root} to start the run over.")
    return path


def load_state(path: Path, device="cpu"):
    """(model, tokenizer, TrainingState) to pass to train.unlearn(resume=state); one sentence
    naming the file when one of the checkpoint's is missing or damaged."""
    path = Path(path)
    model, tokenizer = load(path, device=device)
    try:
        if (path / "adapter_config.json").is_file():  # a LoRA run's: its adapter on the frozen base
            lora.load_adapter(model, path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise damaged(path / "adapter_model.safetensors", e) from None
    try:
        saved = json.loads((path / "state.json").read_text())
        state = TrainingState(epoch=saved["epoch"], step=saved["step"], micro=saved["micro"],
                              curves=saved["curves"], rng=(saved["rng"][0], tuple(saved["rng"][1]), saved["rng"][2]),
                              method=saved["method"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise damaged(path / "state.json", e) from None
    try:
        trainer = torch.load(path / "trainer.pt", map_location=device, weights_only=True)
        state.engine, state.pending = trainer["engine"], trainer["pending"]
        state.method = {**state.method, **trainer["method"]}
    except Exception as e:  # torch.load raises many kinds on a truncated or foreign file
        raise damaged(path / "trainer.pt", e) from None
    state.sharded = str(path / "sharded") if (path / "sharded").is_dir() else None
    return model, tokenizer, state


def damaged(path: Path, error: Exception) -> UserError:
    what = "is missing" if isinstance(error, FileNotFoundError) else f"is damaged ({type(error).__name__})"
    return UserError(f"{path} {what}, so the run cannot continue from it; start it again with another --out.")
