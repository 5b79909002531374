"""The training loop: TOFU fine-tuning, PMC, and the baselines in one plain loop.

AdamW with a linear warmup of one epoch and linear decay to 0 (HF Trainer's
default schedule, as in the authors' code), gradient accumulation, bf16
autocast on CUDA, and no gradient clipping unless asked for (the authors'
DeepSpeed config sets none). Unlearning runs as long as the authors' Trainer
did (`RunLength`). Every epoch PMC resamples the forget questions with the
model as it is at that moment.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from . import baselines, pmc
from .checkpoint import build
from .errors import UserError
from .model import Transformer, nll
from .qa import encode_qa, encode_rows
from .sample import Sampling
from .tokenizer import Tokenizer

METHODS = ("pmc", "ga", "gd", "idk", "npo", "simnpo")


@dataclass
class UnlearnConfig:
    """Defaults: the authors' Phi-1.5 configuration (docs/method.md §2)."""
    method: str = "pmc"
    epochs: int = 40
    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    grad_accum: int = 4
    max_length: int = 200
    lam: float = 1.5  # weight of the retain NLL
    n_samples: int = 5
    temperature: float = 1.25
    top_p: float = 0.95
    top_k: int | None = 50  # HF generate's default, which the authors' sampling applied
    min_len: int = 0
    compile: bool = False  # PMC's sampling with a compiled decode step (a CUDA graph on a GPU)
    sample_dtype: str | None = None  # PMC's sampling from a copy of the weights in this dtype (bfloat16 on a GPU)
    max_grad_norm: float | None = None  # clip the gradient norm to this (None: no clipping, as the authors)
    npo_beta: float = 0.1
    simnpo_beta: float = 2.5
    simnpo_gamma: float = 0.0
    seed: int = 0

    @property
    def sampling(self) -> Sampling:
        """PMC's draws (step 2)."""
        return Sampling(self.temperature, self.top_p, self.top_k)

    def validate(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        try:
            self.sampling
        except ValueError as e:
            problems.append(str(e).removeprefix("Bad sampling setting: ").removesuffix("."))
        if self.n_samples < 1:
            problems.append(f"n (samples per question) must be at least 1, not {self.n_samples}")
        if not self.lam >= 0:
            problems.append(f"lambda must not be negative, not {self.lam}")
        if self.sample_dtype not in (None, "float32", "bfloat16", "float16"):
            problems.append(f"sample dtype must be float32, bfloat16 or float16, not {self.sample_dtype!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 2:
            problems.append("epochs, batch size, gradient accumulation and max length must be positive")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"the gradient clipping norm must be positive, not {self.max_grad_norm}")
        if not self.lr > 0:
            problems.append(f"the learning rate must be positive, not {self.lr}")
        if problems:
            raise UserError(f"Bad hyperparameter: {'; '.join(problems)}.")


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer_and_schedule(model: Transformer, lr: float, weight_decay: float, total_steps: int, warmup_steps: int):
    """AdamW; lr rises linearly over warmup_steps, then falls linearly to 0 (HF's linear schedule)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimizer_step(model, opt, sched, max_grad_norm: float | None = None) -> None:
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


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


class NonFiniteLoss(UserError):
    pass


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"The loss became {loss.item()} {where}; lower the learning rate.")


def finetune(model: Transformer, tokenizer: Tokenizer, rows: list[dict], *, epochs: int, lr: float, batch_size: int,
             max_length: int, weight_decay: float = 0.01, grad_accum: int = 1, seed: int = 0,
             max_grad_norm: float | None = None, desc: str = "fine-tune", progress: bool = True,
             on_epoch=None) -> list[float]:
    """Plain supervised fine-tuning on QA pairs (TOFU's step before unlearning);
    returns the mean loss of each epoch. on_epoch(epoch) returning True stops early.
    Every epoch runs in full (for TOFU's 4,000 rows in batches of 16 x 2 or 8 x 2,
    as many steps as the authors' Trainer makes), warmup one epoch, no clipping
    unless max_grad_norm is given."""
    device, rng = model.device, random.Random(seed)
    micro = math.ceil(len(rows) / batch_size)
    total = epochs * math.ceil(micro / grad_accum)
    opt, sched = optimizer_and_schedule(model, lr, weight_decay, total, math.ceil(micro / grad_accum))
    model.train()
    losses = []
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        epoch_loss = 0.0
        for i in range(micro):
            chunk = [rows[j] for j in order[i * batch_size:(i + 1) * batch_size]]
            batch = encode_rows(tokenizer, chunk, max_length, device)
            with autocast(device):
                loss = nll(model, batch)
            check_finite(loss, f"in fine-tuning epoch {epoch + 1}")
            (loss / grad_accum).backward()
            epoch_loss += loss.item() / micro
            if (i + 1) % grad_accum == 0 or i + 1 == micro:
                optimizer_step(model, opt, sched, max_grad_norm)
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
def forget_nll(model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_length: int, limit: int = 32) -> float:
    """Monitoring only: the NLL of the ground-truth forget answers, on a
    separate batch under no_grad, never part of any objective."""
    rows = rows[:limit]
    batch = encode_rows(tokenizer, rows, max_length, model.device)
    with autocast(model.device):
        return nll(model, batch).item()


def reference_logprobs(model: Transformer, tokenizer: Tokenizer, rows: list[dict], cfg: UnlearnConfig) -> torch.Tensor:
    """NPO's log p_ref(y|x): the model before unlearning, computed once per forget row."""
    out = []
    with torch.no_grad(), autocast(model.device):
        for i in range(0, len(rows), cfg.batch_size):
            chunk = rows[i:i + cfg.batch_size]
            batch = encode_rows(tokenizer, chunk, cfg.max_length, model.device)
            out.append(baselines.sequence_logprob(model, batch)[0].float())
    return torch.cat(out)


def method_loss(model: Transformer, cfg: UnlearnConfig, forget: dict, retain: dict, ref_logprob=None):
    """The objective of cfg.method on one micro-batch: (loss, logged parts)."""
    if cfg.method == "pmc":
        return pmc.pmc_loss(model, forget, retain, cfg.lam)
    extra = {"npo": {"ref_logprob": ref_logprob, "beta": cfg.npo_beta},
             "simnpo": {"beta": cfg.simnpo_beta, "gamma": cfg.simnpo_gamma}}.get(cfg.method, {})
    return baselines.LOSSES[cfg.method](model, forget, retain, cfg.lam, **extra)


def unlearn(model: Transformer, tokenizer: Tokenizer, forget_rows: list[dict], retain_rows: list[dict],
            cfg: UnlearnConfig, *, on_batch=None, on_epoch_end=None, resume: dict | None = None,
            progress: bool = True) -> dict:
    """Unlearn forget_rows with cfg.method; returns the training curves.

    on_batch(kind, batch), if given, sees every batch that enters a loss
    (kind: "collapse", "forget" or "retain"). on_epoch_end(state) receives,
    after every epoch, everything needed to continue (`resume=state`): the
    optimizer, schedule and sampling-order states, PMC's y0 and best-so-far
    cache, and the curves so far. The model's weights are the caller's to save."""
    cfg.validate()
    device, rng = model.device, random.Random(cfg.seed)
    questions = [r["question"] for r in forget_rows]
    length = RunLength.of(len(questions), cfg.batch_size, cfg.grad_accum, cfg.epochs)
    opt, sched = optimizer_and_schedule(model, cfg.lr, cfg.weight_decay, length.max_steps, length.warmup)
    y0, cache, ref_logprob = None, pmc.BestSoFar(), None
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        rng.setstate(resume["rng"])
        curves, y0, first_epoch, step = resume["curves"], resume["y0"], resume["epoch"], resume["step"]
        cache = pmc.BestSoFar(dict(resume["cache_answers"]), dict(resume["cache_scores"]))
        ref_logprob = resume.get("ref_logprob")
    else:
        curves = {"step": [], "epoch": [], "lr": [], "loss": [], "retain_loss": [], "forget_loss": [],
                  "picked_rouge_l": [], "gt_forget_nll_epoch": [], "gt_forget_nll": []}
        first_epoch = step = 0
        if cfg.method == "pmc":
            y0 = pmc.initial_answers(model, tokenizer, questions, cfg.max_length)
        elif cfg.method == "npo":
            ref_logprob = reference_logprobs(model, tokenizer, forget_rows, cfg)

    def forget_batch(idx: list[int]) -> dict:
        """The forget side of the loss for one micro-batch of forget indices."""
        if cfg.method == "pmc":
            return pmc.collapse_batch(tokenizer, [questions[q] for q in idx], [cache.answers[q] for q in idx],
                                      cfg.max_length, device)
        answers = [baselines.IDK_ANSWER if cfg.method == "idk" else forget_rows[q]["answer"] for q in idx]
        return encode_qa(tokenizer, [questions[q] for q in idx], answers, cfg.max_length, device)

    sampler = model  # PMC draws from the current weights, in sample_dtype if one is set
    sample_dtype = getattr(torch, cfg.sample_dtype) if cfg.sample_dtype else model.dtype
    if cfg.method == "pmc" and sample_dtype != model.dtype:
        sampler = build(model.config, dict(model.state_dict()), device=model.device, dtype=sample_dtype)
    model.train()
    bar = tqdm(total=length.max_steps, initial=step, desc=f"unlearn ({cfg.method})", disable=not progress)
    for epoch in range(first_epoch, length.epochs):
        order = list(range(len(questions)))
        rng.shuffle(order)
        parts: dict[str, list[float]] = {}
        for i in range(length.micro):
            if step == length.max_steps:  # the Trainer stops here, partway through the last epoch
                break
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            retain_idx = rng.sample(range(len(retain_rows)), k=min(len(idx), len(retain_rows)))
            if cfg.method == "pmc":
                if sampler is not model:
                    sampler.load_weights_from(model)
                pmc.resample(sampler, tokenizer, cache, idx, questions, y0, n=cfg.n_samples, sampling=cfg.sampling,
                             max_length=cfg.max_length, min_len=cfg.min_len, seed=cfg.seed * 1_000_003 + step * 997 + i,
                             compile=cfg.compile)
                parts.setdefault("picked_rouge_l", []).extend(cache.scores[q] for q in idx)
            fb = forget_batch(idx)
            rb = encode_rows(tokenizer, [retain_rows[j] for j in retain_idx], cfg.max_length, device)
            if on_batch is not None:
                on_batch("collapse" if cfg.method == "pmc" else "forget", fb)
                on_batch("retain", rb)
            with autocast(device):
                loss, logs = method_loss(model, cfg, fb, rb, None if ref_logprob is None else ref_logprob[idx])
            check_finite(loss, f"in unlearning epoch {epoch + 1}")
            (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss.item(), **logs}.items():
                parts.setdefault(k, []).append(v)
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == length.micro:
                curves["lr"].append(sched.get_last_lr()[0])
                optimizer_step(model, opt, sched, cfg.max_grad_norm)
                step += 1
                curves["step"].append(step)
                curves["epoch"].append(epoch + 1)
                for k in ("loss", "retain_loss", "forget_loss", "picked_rouge_l"):
                    values = parts.pop(k, [])
                    curves[k].append(sum(values) / len(values) if values else None)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{curves['loss'][-1]:.3f}",
                                **({"picked_rouge": f"{curves['picked_rouge_l'][-1]:.3f}"}
                                   if cfg.method == "pmc" else {}))
        model.eval()
        curves["gt_forget_nll_epoch"].append(epoch + 1)
        curves["gt_forget_nll"].append(forget_nll(model, tokenizer, forget_rows, cfg.max_length))
        model.train()
        if on_epoch_end is not None:
            on_epoch_end({"epoch": epoch + 1, "final": epoch + 1 == length.epochs, "step": step, "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "rng": rng.getstate(), "curves": curves, "y0": y0,
                          "cache_answers": cache.answers, "cache_scores": cache.scores,
                          "ref_logprob": ref_logprob})
    bar.close()
    model.eval()
    curves = dict(curves)
    if cfg.method == "pmc":
        curves["y0"] = y0
        curves["final_picks"] = [cache.answers.get(q) for q in range(len(questions))]
    curves["config"] = asdict(cfg)
    return curves


__all__ = ["UnlearnConfig", "RunLength", "METHODS", "NonFiniteLoss", "finetune", "unlearn"]
