"""The training loops: TOFU fine-tuning, and unlearning with PMC or a baseline.

AdamW with a linear warmup of one epoch and linear decay to 0 (HF Trainer's
default schedule, as in the authors' code), gradient accumulation, bf16
autocast on CUDA, and no gradient clipping unless asked for (the authors'
DeepSpeed config sets none). Unlearning runs as long as the authors' Trainer
did (`RunLength`). Every epoch PMC resamples the forget questions with the
model as it is at that moment.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from . import distributed, lora
from .baselines import BASELINES
from .config import METHODS, UnlearnConfig
from .curves import CURVES, Curves
from .engine import Engine, Share, optimizer_and_schedule, optimizer_step
from .errors import NonFiniteLoss, UserError
from .method import Method, nll
from .model import Transformer, autocast
from .pmc import PMC
from .qa import encode_rows
from .tokenizer import Tokenizer

METHOD_CLASSES: dict[str, type[Method]] = {"pmc": PMC, **BASELINES}
assert tuple(METHOD_CLASSES) == METHODS


@dataclass(frozen=True)
class RunLength:
    """How long the authors' HF Trainer unlearns (their `unlearning/unlearning.py`).

    It is given max_steps = floor(epochs * |forget| / (batch * accum)) optimizer
    steps and warms up for max(1, floor(|forget| / (batch * accum))) of them.
    An epoch is ceil(|forget| / batch) micro-batches, and its last, shorter group
    of micro-batches is a step too, so an epoch has ceil(micro / accum) steps and
    the run may stop partway through an epoch (Phi on forget10: 250 steps of 7 an
    epoch, stopping 5 steps into epoch 36)."""
    micro: int  # micro-batches per epoch
    steps_per_epoch: int
    max_steps: int
    warmup: int

    @classmethod
    def of(cls, n_rows: int, batch_size: int, grad_accum: int, epochs: int) -> "RunLength":
        micro = math.ceil(n_rows / batch_size)
        return cls(micro, math.ceil(micro / grad_accum), epochs * n_rows // (batch_size * grad_accum),
                   max(1, n_rows // (batch_size * grad_accum)))

    @property
    def epochs(self) -> int:
        """Epochs begun, the last perhaps cut short."""
        return math.ceil(self.max_steps / self.steps_per_epoch)


def run_length(n_questions: int, cfg: UnlearnConfig) -> RunLength:
    """cfg's RunLength on n_questions; one clear sentence when it makes no optimizer step."""
    length = RunLength.of(n_questions, cfg.batch_size, cfg.grad_accum, cfg.epochs)
    if length.max_steps == 0 and cfg.epochs > 0:
        raise UserError(f"{cfg.epochs} epoch(s) of {n_questions} forget questions in batches of "
                        f"{cfg.batch_size} x {cfg.grad_accum} make no optimizer step (the authors' run length is "
                        f"floor(epochs x questions / (batch x accumulation))); raise --epochs or lower --batch-size "
                        f"or --grad-accum.")
    return length


def updates_now(cfg: UnlearnConfig, trainer_step: bool, micro_done: int) -> bool:
    """Whether AdamW updates after this micro-batch. By default at every step of HF's Trainer:
    every grad_accum micro-batches, and after an epoch's last, shorter group. With update_count
    "deepspeed", every grad_accum micro-batches of the whole run, as the authors' pinned setup
    applied them (accelerate 1.6.0 left the boundary to DeepSpeed 0.13.1's own counter, which
    never resets at an epoch's end): gradients carry over epoch ends, the schedule still spans
    the Trainer's max_steps, and the run stops where the Trainer stops (Phi on forget10: 223
    updates in the Trainer's 250 steps; docs/authors.md)."""
    if cfg.update_count == "deepspeed":
        return micro_done % cfg.grad_accum == 0
    return trainer_step


def check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"The loss became {loss} {where}; lower the learning rate.")


def check_weights(model: torch.nn.Module, where: str) -> None:
    """After every optimizer step: a weight that became NaN or infinite ends the run before anything
    is saved (under torchrun every rank checks its shards, and all stop together)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    bad = float(not torch.stack([torch.isfinite(t).all() for t in local]).all())
    if distributed.all_sum([bad], local[0].device)[0]:
        raise NonFiniteLoss(f"The weights became non-finite {where}; lower the learning rate.")


def finetune(model: Transformer, tokenizer: Tokenizer, rows: list[dict], *, epochs: int, lr: float, batch_size: int,
             max_length: int, weight_decay: float = 0.01, grad_accum: int = 1, seed: int = 0,
             max_grad_norm: float | None = None, desc: str = "fine-tune", progress: bool = True,
             on_epoch=None, decay_all: bool = False, train_dtype: str | None = None) -> list[float]:
    """Plain supervised fine-tuning on QA pairs (TOFU's step before unlearning);
    returns the mean loss of each epoch. on_epoch(epoch) returning True stops early.
    train_dtype "bfloat16": the steps under bfloat16 autocast (None: on a GPU only).
    Every epoch runs in full (for TOFU's 4,000 rows in batches of 16 x 2 or 8 x 2,
    as many steps as the authors' Trainer makes), warmup one epoch, no clipping
    unless max_grad_norm is given, weight decay as HF's Trainer applies it (decay_all: on every
    parameter)."""
    device, rng = model.device, random.Random(seed)
    micro = math.ceil(len(rows) / batch_size)
    total = epochs * math.ceil(micro / grad_accum)
    opt, sched = optimizer_and_schedule(model, lr, weight_decay, total, math.ceil(micro / grad_accum), decay_all)
    model.train()
    losses = []
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        epoch_loss = 0.0
        for i in range(micro):
            chunk = [rows[j] for j in order[i * batch_size:(i + 1) * batch_size]]
            with autocast(device, train_dtype):
                loss = nll(model, Share.whole(encode_rows(tokenizer, chunk, max_length, device)))
            check_finite(loss.item(), f"in fine-tuning epoch {epoch + 1}")
            (loss / grad_accum).backward()
            epoch_loss += loss.item() / micro
            if (i + 1) % grad_accum == 0 or i + 1 == micro:
                optimizer_step(model, opt, sched, max_grad_norm)
                check_weights(model, f"in fine-tuning epoch {epoch + 1}")
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        losses.append(epoch_loss)
        if on_epoch is not None:
            model.eval()
            stop = on_epoch(epoch + 1)
            model.train()
            if stop:
                break
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def forget_nll(model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_length: int,
               limit: int = 32) -> float | None:
    """Monitoring only: the NLL of the ground-truth forget answers, on a
    separate batch under no_grad, never part of any objective; None for
    questions without answers (your own data)."""
    rows = rows[:limit]
    if not all("answer" in r for r in rows):
        return None
    batch = encode_rows(tokenizer, rows, max_length, model.device)
    with autocast(model.device):
        return nll(model, Share.whole(batch)).item()


@dataclass
class TrainingState:
    """Everything an unlearning run needs to continue after an epoch (`unlearn(resume=...)`),
    which resume.py writes to a checkpoint and reads back."""
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done, as HF's Trainer counts them
    micro: int = 0  # micro-batches done
    final: bool = False  # the run's last epoch is done
    engine: dict | None = None  # AdamW's and the schedule's states (under torchrun AdamW's is in `sharded`)
    rng: tuple | None = None  # the batch order's random.Random state
    curves: dict = field(default_factory=lambda: {k: [] for k in CURVES})
    method: dict = field(default_factory=dict)  # the method's own state: PMC's y0 and picks, NPO's reference
    sharded: str | None = None  # under torchrun: the folder of the sharded model and optimizer (resume.py)
    pending: list[torch.Tensor] | None = None  # gradients carried over an epoch's end (update_count "deepspeed")


def unlearn(model: Transformer, tokenizer: Tokenizer, forget_rows: list[dict], retain_rows: list[dict],
            cfg: UnlearnConfig, *, on_batch=None, on_epoch_end=None, resume: TrainingState | None = None,
            y0: list[str] | None = None, progress: bool = True, before: Transformer | None = None) -> dict:
    """Unlearn forget_rows with cfg.method; returns the training curves.

    on_batch(kind, batch), if given, sees every batch that enters a loss
    (kind: "collapse", "forget" or "retain"). on_epoch_end(state, engine) receives,
    after every epoch, the TrainingState to continue from (`resume=state`) and the
    engine whose optimizer it describes. y0, if given, are PMC's reference answers
    already generated (step 1). before: the model as it was before unlearning, which a
    resumed run with --reward fluent scores its samples with. forget_rows need no answers for PMC and IDK. The
    model's weights are the caller's to save. Under torchrun every rank calls this
    alike (`Engine`)."""
    cfg.validate()
    device, rng = model.device, random.Random(cfg.seed)
    length = run_length(len(forget_rows), cfg)
    if cfg.lora_rank is not None and not lora.attached(model):  # a resumed LoRA run's checkpoint has its adapter
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the adapters' initial A, the same on every rank and every run
            lora.attach(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    method = METHOD_CLASSES[cfg.method](model, tokenizer, forget_rows, cfg)
    state = resume or TrainingState()
    curves = Curves(state.curves)
    if resume is None:
        method.start(curves, y0)  # PMC's step 1, NPO's reference
    else:
        method.load_state_dict(state.method)
        rng.setstate(state.rng)
        if cfg.reward == "fluent":
            if before is None:
                raise UserError("A --reward fluent run resumes with the model it started from (unlearn(before=...)).")
            method.judge(before)
    engine = Engine(model, cfg, length.max_steps, length.warmup)
    if resume is not None:
        if engine.wrapped != bool(state.sharded):
            raise UserError("A run checkpointed under torchrun resumes under torchrun, and a run of one process in "
                            "one process; start --resume the way the run was started.")
        engine.load_state_dict(state.engine, state.sharded)
        engine.set_gradients(state.pending)
    model.train()
    engine.module.train()
    bar = tqdm(total=length.max_steps, initial=state.step, desc=f"unlearn ({cfg.method})", disable=not progress)
    for epoch in range(state.epoch, length.epochs):
        order = list(range(len(forget_rows)))
        rng.shuffle(order)
        for i in range(length.micro):
            if state.step == length.max_steps:  # the Trainer stops here, partway through the last epoch
                break
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            retain_idx = rng.sample(range(len(retain_rows)), k=min(len(idx), len(retain_rows)))
            if method.draws:
                engine.plain()  # the current weights (under FSDP gathered from the shards)
            method.prepare(idx, epoch + 1, curves)  # PMC: steps 2-5, every rank alike
            forget, weight = engine.share(method.batch(idx))
            retain, _ = engine.share(encode_rows(tokenizer, [retain_rows[j] for j in retain_idx], cfg.max_length,
                                                 device))
            if on_batch is not None:
                on_batch(method.kind, forget.batch)
                on_batch("retain", retain.batch)
            with autocast(device, cfg.train_dtype):
                loss, logs = method.loss(engine.module, forget, retain)
            total, *parts = engine.total([loss.item(), *logs.values()], weight)
            check_finite(total, f"in unlearning epoch {epoch + 1}")
            engine.backward(loss, weight, cfg.grad_accum)
            curves.add(loss=total, **dict(zip(logs, parts)))
            state.micro += 1
            trainer_step, lr = (i + 1) % cfg.grad_accum == 0 or i + 1 == length.micro, engine.lr
            if updates_now(cfg, trainer_step, state.micro):
                engine.step()
                check_weights(engine.module, f"in unlearning epoch {epoch + 1}")
            if trainer_step:
                state.step += 1
                curves.step(state.step, epoch + 1, lr)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, **curves.last())
        engine.plain().eval()
        curves.epoch(epoch + 1, forget_nll(model, tokenizer, forget_rows, cfg.max_length), **method.monitor())
        model.train()
        state.epoch, state.final = epoch + 1, epoch + 1 == length.epochs
        state.engine, state.pending = engine.state_dict(), engine.gradients()
        state.rng, state.method = rng.getstate(), method.state_dict()
        if on_epoch_end is not None:
            on_epoch_end(state, engine)
    bar.close()
    engine.plain().eval()
    return {**state.curves, **method.result(), "config": asdict(cfg)}


__all__ = ["UnlearnConfig", "RunLength", "TrainingState", "METHODS", "NonFiniteLoss", "finetune", "unlearn"]
