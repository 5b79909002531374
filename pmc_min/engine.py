"""How the weights train: the optimizer and its schedule, in one process or under torchrun.

`Engine` owns the optimizer (AdamW, HF's linear schedule with warmup) and, under
torchrun, the wrapping of the model in DistributedDataParallel (the default) or
FSDP2 (`cfg.fsdp`). The training loop (`train.unlearn`) asks it for this rank's
share of each micro-batch, hands it the loss, and calls `step`; nothing in the loop
or in a method's loss knows how many processes there are.

Each micro-batch of cfg.batch_size rows is split between the ranks (`share`), each
rank runs forward and backward on its share, and the gradients are averaged. So that
the step equals one process's on the whole micro-batch, a share's means divide by
the whole micro-batch's counts (answer tokens, rows: `Share`), and the loss is
multiplied by the number of ranks, which the average divides back out.

`model`, the plain module, serves sampling, monitoring and the final weights. Under
FSDP the training copy is sharded, with each transformer block a unit (bf16 compute,
float32 reduction on GPUs), and the plain model is refreshed from the shards when it is
next needed (`plain`): a gathered copy that PMC samples from, rather than decoding
through the shards, which would gather every layer at every token. With a sample dtype
(bfloat16 on GPUs) that copy is kept in it, so a rank holds its float32 shards and one
bf16 copy, and the unlearned model is evaluated and written in that dtype.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import distributed
from .checkpoint import build
from .config import UnlearnConfig
from .model import NORMS, Transformer, refresh_rotary
from .qa import answer_tokens


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups as HF's Trainer makes them (`Trainer.get_decay_parameter_names`):
    weight decay on every weight matrix and embedding, none on biases and norm weights."""
    spared = {id(p) for m in model.modules() for name, p in m.named_parameters(recurse=False)
              if name == "bias" or isinstance(m, NORMS)}
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights once; LoRA's frozen base left out
    return [{"params": [p for p in params if id(p) not in spared], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in spared], "weight_decay": 0.0}]


def optimizer_and_schedule(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int,
                           warmup_steps: int, decay_all: bool = False):
    """AdamW, weight decay as HF's Trainer applies it (`decay_groups`; decay_all: on every parameter,
    the tiny default's own recipe); lr rises linearly over warmup_steps, then falls linearly to 0
    (HF's linear schedule)."""
    groups = [p for p in model.parameters() if p.requires_grad] if decay_all else decay_groups(model, weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

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


@dataclass
class Share:
    """One rank's rows of a micro-batch, and what the micro-batch's means divide by: its answer
    tokens and its rows over every rank. In one process: the whole batch and its own counts."""
    batch: dict
    tokens: int
    rows: int

    @classmethod
    def whole(cls, batch: dict) -> "Share":
        return cls(batch, answer_tokens(batch), len(batch["input_ids"]))


class Engine:
    """The optimizer, and the model as it trains: plain, under DDP, or sharded by FSDP2."""

    def __init__(self, model: Transformer, cfg: UnlearnConfig, total_steps: int, warmup_steps: int):
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
                refresh_rotary(model, model.device)
        self.wrapped = self.module is not model  # DDP or FSDP: checkpoints are sharded (resume.py)
        self.max_grad_norm = cfg.max_grad_norm
        self.opt, self.sched = optimizer_and_schedule(self.module, cfg.lr, cfg.weight_decay, total_steps,
                                                      warmup_steps)

    def share(self, batch: dict) -> tuple[Share, float]:
        """(this rank's share of a micro-batch, its weight): every rank runs a forward and backward,
        so a rank left without rows runs the first with weight 0."""
        if self.world == 1:
            return Share.whole(batch), 1.0
        n = len(batch["input_ids"])
        own = list(range(distributed.rank(), n, self.world))
        part = {k: v[own or [0]] for k, v in batch.items()}
        return Share(part, answer_tokens(batch), n), 1.0 if own else 0.0

    def backward(self, loss: torch.Tensor, weight: float, grad_accum: int) -> None:
        (loss * (weight * self.world) / grad_accum).backward()

    def total(self, values: list[float], weight: float) -> list[float]:
        """Logged values of the whole micro-batch: each rank's parts of its means, summed."""
        return distributed.all_sum([weight * v for v in values], self.model.device)

    def step(self) -> None:
        optimizer_step(self.module, self.opt, self.sched, self.max_grad_norm)
        self.stale = self.fsdp

    def gradients(self) -> list[torch.Tensor] | None:
        """The gradients accumulated and not yet applied (None: none)."""
        grads = [p.grad for p in self.module.parameters()]
        return None if all(g is None for g in grads) else [g if g is None else g.detach().clone() for g in grads]

    def set_gradients(self, grads: list[torch.Tensor | None] | None) -> None:
        for p, g in zip(self.module.parameters(), grads or [], strict=bool(grads)):
            p.grad = None if g is None else g.to(p.device)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def plain(self) -> Transformer:
        """The plain model with the current weights (under FSDP gathered from the shards: every
        rank must call this at the same point)."""
        if self.stale:  # one tensor gathered at a time: the largest is the only full float32 one held
            with torch.no_grad():
                for mine, shard in zip(self.model.parameters(), self.module.parameters(), strict=True):
                    mine.copy_(shard.full_tensor())
            self.stale = False
        return self.model

    def state_dict(self) -> dict:
        """The optimizer's and the schedule's states (under torchrun the optimizer's is sharded:
        `save_sharded`)."""
        return {"optimizer": None if self.wrapped else self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict, sharded: str | None) -> None:
        if sharded:
            self.load_sharded(sharded)
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])

    def save_sharded(self, folder) -> None:
        """The training weights and AdamW states, each rank writing its shards (every rank calls this)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        weights, optimizer = get_state_dict(self.module, self.opt)
        dcp.save({"model": weights, "optimizer": optimizer}, checkpoint_id=str(folder))

    def load_sharded(self, folder) -> None:
        """`save_sharded`'s files read back, resharded to this run's ranks."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        weights, optimizer = get_state_dict(self.module, self.opt)
        saved = {"model": weights, "optimizer": optimizer}
        dcp.load(saved, checkpoint_id=str(folder))
        set_state_dict(self.module, self.opt, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"])
