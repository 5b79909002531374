"""The training loop: TOFU fine-tuning, PMC, and the baselines in one plain loop.

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
import warnings
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from . import baselines, distributed, pmc
from .checkpoint import build
from .errors import UserError
from .curves import CURVES, Curves
from .model import Transformer, answer_tokens, autocast, nll
from .qa import answer_logprobs, encode_qa, encode_rows
from .sample import Sampling, sampling_problems
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
    selection_temperature: float = 0.0  # PMC's choice among its samples: 0 the argmax, > 0 Bradley-Terry (pmc.select)
    compile: bool = False  # PMC's sampling with a compiled decode step (a CUDA graph on a GPU)
    sample_dtype: str | None = None  # PMC's sampling from a copy of the weights in this dtype (bfloat16 on a GPU)
    fsdp: bool = False  # under torchrun: FSDP2 shards weights, gradients and AdamW states per block (else DDP)
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
        problems += sampling_problems(self.temperature, self.top_p, self.top_k)  # the rules Sampling checks
        if not self.selection_temperature >= 0:
            problems.append(f"the selection temperature must not be negative, not {self.selection_temperature}")
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
        if self.fsdp and distributed.WORLD.size == 1 and not distributed.launched():
            raise UserError("--fsdp shards the model over torchrun's processes; start the run with "
                            "torchrun --nproc-per-node N run.py ...")


def optimizer_and_schedule(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int,
                           warmup_steps: int):
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


def run_length(n_questions: int, cfg: UnlearnConfig) -> RunLength:
    """cfg's RunLength on n_questions; one clear sentence when it makes no optimizer step."""
    length = RunLength.of(n_questions, cfg.batch_size, cfg.grad_accum, cfg.epochs)
    if length.max_steps == 0 and cfg.epochs > 0:
        raise UserError(f"{cfg.epochs} epoch(s) of {n_questions} forget questions in batches of "
                        f"{cfg.batch_size} x {cfg.grad_accum} make no optimizer step (the authors' run length is "
                        f"floor(epochs x questions / (batch x accumulation))); raise --epochs or lower --batch-size "
                        f"or --grad-accum.")
    return length


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
        return nll(model, batch).item()


def method_loss(model: Transformer, cfg: UnlearnConfig, forget: dict, retain: dict, ref_logprob=None):
    """The objective of cfg.method on one micro-batch: (loss, logged parts)."""
    if cfg.method == "pmc":
        return pmc.pmc_loss(model, forget, retain, cfg.lam)
    extra = {"npo": {"ref_logprob": ref_logprob, "beta": cfg.npo_beta},
             "simnpo": {"beta": cfg.simnpo_beta, "gamma": cfg.simnpo_gamma}}.get(cfg.method, {})
    return baselines.LOSSES[cfg.method](model, forget, retain, cfg.lam, **extra)


@dataclass
class TrainingState:
    """Everything an unlearning run needs to continue after an epoch (`unlearn(resume=...)`),
    which resume.py writes to a checkpoint and reads back."""
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    final: bool = False  # the run's last epoch is done
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: tuple | None = None  # the batch order's random.Random state
    curves: dict = field(default_factory=lambda: {k: [] for k in CURVES})
    y0: list[str] | None = None  # PMC's reference answers (step 1)
    cache: pmc.BestSoFar = field(default_factory=pmc.BestSoFar)  # PMC's picks (step 5)
    ref_logprob: torch.Tensor | None = None  # NPO's reference log-probabilities
    sharded: str | None = None  # under torchrun: the folder of the sharded model and optimizer (resume.py)
    engine: "Engine | None" = field(default=None, repr=False, compare=False)  # the live engine, for checkpoints


class Engine:
    """How the weights train: in one process, or under torchrun with DistributedDataParallel
    (the default) or FSDP2 (`cfg.fsdp`).

    Each micro-batch of cfg.batch_size rows is split between the ranks (`mine`), each rank
    runs forward and backward on its share, and the gradients are averaged. So that the
    step equals one process's on the whole micro-batch, every rank's losses divide by the
    whole micro-batch's counts (answer tokens, rows; `model.nll`, `model.row_mean`), and
    the loss is multiplied by the number of ranks, which the average divides back out.

    `model`, the plain module, serves sampling, monitoring and the final weights. Under
    FSDP the training copy is sharded, with each transformer block a unit (bf16 compute,
    float32 reduction on GPUs), and the plain model is refreshed from the shards when it is
    next needed (`plain`): a gathered copy that PMC samples from, rather than decoding
    through the shards, which would gather every layer at every token. With a sample dtype
    (bfloat16 on GPUs) that copy is kept in it, so a rank holds its float32 shards and one
    bf16 copy, and the unlearned model is evaluated and written in that dtype."""

    def __init__(self, model: Transformer, cfg: UnlearnConfig):
        self.model, self.world, self.fsdp, self.stale = model, distributed.size(), cfg.fsdp, False
        self.module = model
        if self.world > 1 and not cfg.fsdp:
            from torch.nn.parallel import DistributedDataParallel
            cuda = model.device.type == "cuda"
            self.module = DistributedDataParallel(model, device_ids=[model.device] if cuda else None)
        elif cfg.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                      if model.device.type == "cuda" else MixedPrecisionPolicy())
            # the training copy is built on the CPU and fully_shard moves each rank's shards to its
            # device, so a GPU never holds two full float32 copies
            self.module = build(model.config, {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
                                device="cpu")
            # the logits come out of the root as a view; nothing here changes them in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            for block in self.module.layers:
                fully_shard(block, mp_policy=policy)
            fully_shard(self.module, mp_policy=policy)
            if cfg.sample_dtype:  # the plain copy, which PMC samples from, in the sampling dtype only
                model.to(getattr(torch, cfg.sample_dtype))
        self.wrapped = self.module is not model  # DDP or FSDP: checkpoints are sharded (resume.py)

    def mine(self, idx: list[int]) -> tuple[list[int], float]:
        """(this rank's rows of a micro-batch, its weight): every rank runs a forward and backward,
        so a rank left without rows runs the first with weight 0."""
        own = idx[distributed.rank()::self.world]
        return (own, 1.0) if own else (idx[:1], 0.0)

    def count(self, weight: float, *batches: dict, rows: list[int]) -> None:
        """Give each batch the whole micro-batch's counts of answer tokens and rows."""
        if self.world == 1:
            return
        tokens = distributed.all_sum([weight * answer_tokens(b) for b in batches], self.model.device)
        for b, n, r in zip(batches, tokens, rows):
            b["tokens"], b["rows"] = n, r

    def backward(self, loss: torch.Tensor, weight: float, grad_accum: int) -> None:
        (loss * (weight * self.world) / grad_accum).backward()

    def step(self, opt, sched, max_grad_norm: float | None) -> None:
        optimizer_step(self.module, opt, sched, max_grad_norm)
        self.stale = self.fsdp

    def plain(self) -> Transformer:
        """The plain model with the current weights (under FSDP gathered from the shards: every
        rank must call this at the same point)."""
        if self.stale:  # one tensor gathered at a time: the largest is the only full float32 one held
            with torch.no_grad():
                for mine, shard in zip(self.model.parameters(), self.module.parameters(), strict=True):
                    mine.copy_(shard.full_tensor())
            self.stale = False
        return self.model


class ForgetSide:
    """The forget half of a baseline's loss: the forget questions with their ground-truth
    answers (IDK: with "I don't know.")."""
    kind = "forget"

    def __init__(self, model, tokenizer, forget_rows, cfg: UnlearnConfig, state: TrainingState):
        self.tokenizer, self.rows, self.cfg, self.device = tokenizer, forget_rows, cfg, model.device

    def prepare(self, idx: list[int], epoch: int) -> dict:
        return {}

    def batch(self, idx: list[int]) -> dict:
        answers = [baselines.IDK_ANSWER if self.cfg.method == "idk" else self.rows[q]["answer"] for q in idx]
        return encode_qa(self.tokenizer, [self.rows[q]["question"] for q in idx], answers, self.cfg.max_length,
                         self.device)


class Collapse(ForgetSide):
    """PMC's forget half (docs/method.md §2): before each micro-batch, steps 2-5 resample its
    questions from the current weights (in sample_dtype if one is set) into the best-so-far
    cache; the batch then holds the questions and their cached picks only."""
    kind = "collapse"

    def __init__(self, model, tokenizer, forget_rows, cfg: UnlearnConfig, state: TrainingState):
        super().__init__(model, tokenizer, forget_rows, cfg, state)
        self.model, self.state, self.questions = model, state, [r["question"] for r in forget_rows]
        dtype = getattr(torch, cfg.sample_dtype) if cfg.sample_dtype else model.dtype
        self.sampler = (model if dtype == model.dtype else
                        build(model.config, dict(model.state_dict()), device=model.device, dtype=dtype))

    def prepare(self, idx: list[int], epoch: int) -> dict:
        if self.state.engine is not None:
            self.state.engine.plain()  # the current weights (under FSDP gathered from the shards)
        if self.sampler is not self.model:
            self.sampler.load_weights_from(self.model)
        cfg = self.cfg
        return pmc.resample(self.sampler, self.tokenizer, self.state.cache, idx, self.questions, self.state.y0,
                            n=cfg.n_samples, sampling=cfg.sampling, max_length=cfg.max_length, min_len=cfg.min_len,
                            seed=cfg.seed, epoch=epoch, compile=cfg.compile, tau=cfg.selection_temperature)

    def logp_y0(self) -> list[float]:
        """log p(y0 | q) of every forget question under the current weights (the theory
        says it goes to -inf)."""
        return answer_logprobs(self.model, self.tokenizer, self.questions, self.state.y0, self.cfg.max_length,
                               self.cfg.batch_size).tolist()

    def batch(self, idx: list[int]) -> dict:
        cache = self.state.cache
        return pmc.collapse_batch(self.tokenizer, [self.questions[q] for q in idx], [cache.answers[q] for q in idx],
                                  self.cfg.max_length, self.device)


def unlearn(model: Transformer, tokenizer: Tokenizer, forget_rows: list[dict], retain_rows: list[dict],
            cfg: UnlearnConfig, *, on_batch=None, on_epoch_end=None, resume: TrainingState | None = None,
            y0: list[str] | None = None, progress: bool = True) -> dict:
    """Unlearn forget_rows with cfg.method; returns the training curves.

    on_batch(kind, batch), if given, sees every batch that enters a loss
    (kind: "collapse", "forget" or "retain"). on_epoch_end(state) receives,
    after every epoch, the TrainingState to continue from (`resume=state`).
    y0, if given, are PMC's reference answers already generated (step 1).
    forget_rows need no answers for PMC and IDK. The model's weights are the
    caller's to save. Under torchrun every rank calls this alike (`Engine`)."""
    cfg.validate()
    device, rng = model.device, random.Random(cfg.seed)
    length = run_length(len(forget_rows), cfg)
    state = resume or TrainingState()
    if resume is None and cfg.method == "pmc":  # step 1
        state.y0 = y0 or pmc.initial_answers(model, tokenizer, [r["question"] for r in forget_rows], cfg.max_length)
    elif resume is None and cfg.method == "npo":
        state.ref_logprob = answer_logprobs(model, tokenizer, [r["question"] for r in forget_rows],  # NPO's p_ref
                                            [r["answer"] for r in forget_rows], cfg.max_length, cfg.batch_size)
    engine = Engine(model, cfg)
    opt, sched = optimizer_and_schedule(engine.module, cfg.lr, cfg.weight_decay, length.max_steps, length.warmup)
    engine.opt = opt
    if resume is not None:
        if engine.wrapped != bool(state.sharded):
            raise UserError("A run checkpointed under torchrun resumes under torchrun, and a run of one process in "
                            "one process; start --resume the way the run was started.")
        if state.sharded:
            from .resume import load_sharded
            load_sharded(state.sharded, engine)
        else:
            opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        rng.setstate(state.rng)
    state.engine = engine if engine.wrapped else None
    forget = (Collapse if cfg.method == "pmc" else ForgetSide)(model, tokenizer, forget_rows, cfg, state)
    curves = Curves(state.curves)
    if resume is None and cfg.method == "pmc":
        curves.curves["logp_y0"].append(forget.logp_y0())  # epoch 0
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
            drawn = forget.prepare(idx, epoch + 1)  # every rank samples its share of idx and gets all
            if cfg.method == "pmc":
                curves.draws(epoch + 1, len(forget_rows), drawn)
                curves.add(picked_rouge_l=[state.cache.scores[q] for q in idx])
            own, weight = engine.mine(idx)
            own_retain, _ = engine.mine(retain_idx)
            fb = forget.batch(own)
            rb = encode_rows(tokenizer, [retain_rows[j] for j in own_retain], cfg.max_length, device)
            engine.count(weight, fb, rb, rows=[len(idx), len(retain_idx)])
            if on_batch is not None:
                on_batch(forget.kind, fb)
                on_batch("retain", rb)
            with autocast(device):
                ref = None if state.ref_logprob is None else state.ref_logprob[own]
                loss, logs = method_loss(engine.module, cfg, fb, rb, ref)
            total, *parts = distributed.all_sum([weight * v for v in (loss.item(), *logs.values())], device)
            check_finite(torch.tensor(total), f"in unlearning epoch {epoch + 1}")
            engine.backward(loss, weight, cfg.grad_accum)
            curves.add(loss=total, **dict(zip(logs, parts)))
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == length.micro:
                lr = sched.get_last_lr()[0]
                engine.step(opt, sched, cfg.max_grad_norm)
                state.step += 1
                curves.step(state.step, epoch + 1, lr)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{state.curves['loss'][-1]:.3f}",
                                **({"picked_rouge": f"{state.curves['picked_rouge_l'][-1]:.3f}"}
                                   if cfg.method == "pmc" else {}))
        engine.plain().eval()
        curves.epoch(epoch + 1, forget_nll(model, tokenizer, forget_rows, cfg.max_length),
                     forget.logp_y0() if cfg.method == "pmc" else None)
        model.train()
        state.epoch, state.final = epoch + 1, epoch + 1 == length.epochs
        state.optimizer = None if engine.wrapped else opt.state_dict()  # under torchrun, resume.py shards it
        state.scheduler, state.rng = sched.state_dict(), rng.getstate()
        if on_epoch_end is not None:
            on_epoch_end(state)
    bar.close()
    engine.plain().eval()
    state.engine = None
    result = dict(state.curves)
    if cfg.method == "pmc":
        result["y0"] = state.y0
        result["final_picks"] = [state.cache.answers.get(q) for q in range(len(forget_rows))]
    result["config"] = asdict(cfg)
    return result


__all__ = ["UnlearnConfig", "RunLength", "TrainingState", "Engine", "METHODS", "NonFiniteLoss", "finetune", "unlearn"]
