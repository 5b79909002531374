"""Every setting of a run and every default, in one place.

A run's settings come in three layers, merged once (`RunConfig.merged`):
UnlearnConfig's defaults (the authors' Phi-1.5 configuration, docs/method.md §2),
then the preset of the checkpoint's kind (`PRESETS`, chosen from what the checkpoint
is: a chat template or not), then the CPU protocol where it applies (`CPU_PROTOCOL`),
then what the command line gave. Nothing downstream adds a default of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from . import distributed
from .errors import UserError

METHODS = ("pmc", "ga", "gd", "idk", "npo", "simnpo")
EVALS = ("tofu", "leakage", "prefill", "overunlearn", "mcq", "factleak")
UPDATE_COUNTS = ("trainer", "deepspeed")
MAX_SAMPLES = 1000  # samples per question: a question's n samples are drawn in one batch
DTYPES = ("float32", "bfloat16")
REWARDS = ("rouge", "fluent")  # PMC's: the paper's 1 - ROUGE-L recall, or that kept on language (pmc.fluent)
BF16_MIN_PARAMETERS = 50_000_000  # smaller models stay float32 on a CPU (bf16_by_default)


def bf16_by_default(device: str, parameters: int) -> bool:
    """Whether a run trains under bfloat16 autocast and PMC samples from a bfloat16 copy when
    not told otherwise: on a GPU always; on a CPU with AMX for models of BF16_MIN_PARAMETERS or
    more. Measured on 2-core CPUs (docs/benchmarks.md): with AMX, SmolLM2-135M's fine-tuning step
    1.6x, its draw 1.5x and its PMC step 1.5x faster, its results within what float32 runs differ
    by; with AVX-512 BF16 but no AMX, bfloat16 products are slower than float32 ones and so are
    those steps, so such a CPU stays float32. The tiny default (3.7M) gains 1.1-1.4x with AMX too,
    but a run of it takes minutes, and it and the small models of the tests stay float32: the
    precision their documented results and parity checks were made in."""
    if device.startswith("cuda"):
        return True
    if device != "cpu" or parameters < BF16_MIN_PARAMETERS:
        return False
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def sampling_problems(temperature: float, top_p: float, top_k: int | None) -> list[str]:
    """What is wrong with these sampling settings, one phrase each (none: an empty list).
    top_k 0 or None means no top-k, as in HF's generate."""
    problems = []
    if not (temperature > 0 and math.isfinite(temperature)):
        problems.append(f"temperature must be a positive number, not {temperature}")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], not {top_p}")
    if top_k is not None and top_k < 0:
        problems.append(f"top_k must not be negative (0 or None: no top-k), not {top_k}")
    return problems


@dataclass(frozen=True)
class Sampling:
    """How an answer is drawn: temperature, then top-k, then top-p, as HF's
    warpers chain them (top_k None or 0: no top-k). It checks itself when made.
    Where a function takes `sampling=None`, None means greedy decoding."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if problems := sampling_problems(self.temperature, self.top_p, self.top_k):
            raise ValueError(f"Bad sampling setting: {'; '.join(problems)}.")


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
    reward: str = "rouge"  # "fluent": PMC's score plus its fluency excess (pmc.fluent), beyond the paper
    selection_temperature: float = 0.0  # PMC's choice among its samples: 0 the argmax, > 0 Bradley-Terry (pmc.select)
    compile: bool = False  # PMC's sampling with a compiled decode step (a CUDA graph on a GPU)
    sample_dtype: str | None = None  # PMC's sampling from a copy of the weights in this dtype (bfloat16 on a GPU)
    train_dtype: str | None = None  # "bfloat16": training steps under bfloat16 autocast (float32 weights)
    fsdp: bool = False  # under torchrun: FSDP2 shards weights, gradients and AdamW states per block (else DDP)
    max_grad_norm: float | None = None  # clip the gradient norm to this (None: no clipping, as the authors)
    lora_rank: int | None = None  # train LoRA adapters of this rank beside frozen weights (lora.py), not every weight
    lora_alpha: float | None = None  # LoRA's update is scaled by alpha / rank (None: 2 x rank)
    lora_targets: list[str] | None = None  # HF module names LoRA adapts (None: lora.TARGETS of the architecture)
    update_count: str = "trainer"  # when AdamW updates: at HF Trainer's steps, or "deepspeed" (train.updates_now)
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
        finite = ("lr", "weight_decay", "lam", "selection_temperature", "max_grad_norm", "npo_beta", "simnpo_beta",
                  "simnpo_gamma")
        problems += [f"{name} must be a finite number, not {getattr(self, name)}" for name in finite
                     if getattr(self, name) is not None and not math.isfinite(getattr(self, name))]
        if problems:
            raise UserError(f"Bad hyperparameter: {'; '.join(problems)}.")
        if not self.selection_temperature >= 0:
            problems.append(f"the selection temperature must not be negative, not {self.selection_temperature}")
        if not 1 <= self.n_samples <= MAX_SAMPLES:
            problems.append(f"n (samples per question) must be from 1 to {MAX_SAMPLES}, not {self.n_samples}")
        if not self.lam >= 0:
            problems.append(f"lambda must not be negative, not {self.lam}")
        if self.sample_dtype not in (None, "float32", "bfloat16", "float16"):
            problems.append(f"sample dtype must be float32, bfloat16 or float16, not {self.sample_dtype!r}")
        if self.reward not in REWARDS:
            problems.append(f"the reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")
        elif self.reward != "rouge" and self.method != "pmc":
            problems.append(f"--reward {self.reward} is PMC's choice among its samples, and {self.method} draws none")
        if self.train_dtype not in (None, *DTYPES):
            problems.append(f"train dtype must be float32 or bfloat16, not {self.train_dtype!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 2:
            problems.append("epochs, batch size, gradient accumulation and max length must be positive")
        if not self.weight_decay >= 0:
            problems.append(f"the weight decay must not be negative, not {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"the gradient clipping norm must be positive, not {self.max_grad_norm}")
        if not self.lr > 0:
            problems.append(f"the learning rate must be positive, not {self.lr}")
        if self.lora_rank is not None and self.lora_rank < 1:
            problems.append(f"the LoRA rank (--lora) must be 1 or more, not {self.lora_rank}")
        if self.lora_rank is None and (self.lora_alpha is not None or self.lora_targets is not None):
            problems.append("--lora-alpha and --lora-targets go with --lora RANK")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            problems.append(f"the LoRA alpha must be positive, not {self.lora_alpha}")
        if self.lora_targets is not None and not self.lora_targets:
            problems.append("--lora-targets names no projection")
        if self.update_count not in UPDATE_COUNTS:
            problems.append(f"the update count must be one of {', '.join(UPDATE_COUNTS)}, not {self.update_count!r}")
        if problems:
            raise UserError(f"Bad hyperparameter: {'; '.join(problems)}.")
        one_process = distributed.WORLD.size == 1 and not distributed.launched()
        if self.fsdp and self.lora_rank is not None:
            raise UserError("--lora trains under torchrun with DistributedDataParallel, not --fsdp: leave out --fsdp "
                            "(the frozen base is not sharded).")
        if self.fsdp and one_process:
            raise UserError("--fsdp shards the model over torchrun's processes; start the run with "
                            "torchrun --nproc-per-node N run.py ...")
        if self.update_count == "deepspeed" and not one_process:
            raise UserError("--update-count deepspeed runs in one process; under torchrun the updates fall at "
                            "HF Trainer's steps.")


@dataclass(frozen=True)
class FinetuneConfig:
    """TOFU's fine-tuning before unlearning (docs/method.md §2), warmup one epoch, weight decay 0.01."""
    epochs: int
    lr: float
    batch_size: int
    grad_accum: int
    max_length: int
    train_dtype: str = "float32"  # "bfloat16": under bfloat16 autocast, as the unlearning steps


# Every default a run takes, by kind of model, over UnlearnConfig's (the authors' Phi-1.5 configuration,
# docs/method.md §2). A checkpoint whose tokenizer has a chat template gets the authors'
# Llama-3.2-3B-Instruct configuration, prompted as they prompt it; any other the Phi one. The tiny default
# differs where a 4M-parameter model trained from scratch needs it.
PRESETS = {
    "default": dict(unlearn={}, finetune=dict(epochs=5, lr=2e-5, batch_size=16, grad_accum=2, max_length=256),
                    chat=None, eval_samples=100),
    "instruct": dict(unlearn=dict(lam=1.25, n_samples=20, temperature=0.9, top_p=0.95, epochs=30, lr=1e-5,
                                  batch_size=8, grad_accum=2),
                     finetune=dict(epochs=5, lr=1e-5, batch_size=8, grad_accum=2, max_length=256),
                     chat={"system": "You are a helpful assistant.", "date_string": "10 Apr 2025"}, eval_samples=100),
    "tiny": dict(unlearn=dict(lr=2e-4, batch_size=20, grad_accum=1, max_length=96),
                 finetune=dict(epochs=0, lr=1e-3, batch_size=32, grad_accum=1, max_length=96), chat=None,
                 eval_samples=16),
}

# TOFU's protocol cut to the size of a CPU (docs/results-real.md), the default for a real model on a CPU:
# forget01; fine-tuning on its 2 authors and the first 8 retain authors (200 QA), the retain loss and the
# reference on those 8; 40 questions per utility split (retain spread over the 8 authors); shorter runs, with
# a larger learning rate and the authors' Phi-1.5 temperature (with T 0.9 and lr 5e-5 PMC's samples stayed
# close to y0 and unlearn quality rose 22 points, not 44: docs/results-real.md).
CPU_PROTOCOL = dict(split="forget01", retain_authors=8, eval_rows=40,
                    unlearn=dict(epochs=10, lr=1e-4, temperature=1.25, batch_size=8, grad_accum=1, n_samples=5,
                                 max_length=160),
                    finetune=dict(epochs=5, lr=2e-4, batch_size=8, grad_accum=1, max_length=160), eval_samples=5)


# The protocols: "full" is TOFU's as the authors run it; "cpu" cuts the data and shortens the unlearning;
# "slice" cuts the data as "cpu" does (the same fine-tuned model and evaluation, with their sequence length)
# and leaves the preset's unlearning settings as the authors set them.
PROTOCOLS = ("full", "cpu", "slice")
SLICED = ("cpu", "slice")


def preset_settings(preset: str, protocol: str) -> dict:
    """The preset's defaults, with the CPU protocol's data cut under "cpu" and "slice" and its shorter
    unlearning under "cpu"."""
    merged = dict(PRESETS[preset])
    if protocol in SLICED:
        cut = CPU_PROTOCOL["unlearn"] if protocol == "cpu" else {"max_length": CPU_PROTOCOL["unlearn"]["max_length"]}
        merged["unlearn"] = {**merged["unlearn"], **cut}
        merged["finetune"] = {**merged["finetune"], **CPU_PROTOCOL["finetune"]}
        merged["eval_samples"] = CPU_PROTOCOL["eval_samples"]
    return merged


@dataclass
class RunConfig:
    """Everything a run was asked for, every default merged: what the pipeline reads and what
    results.json records. None in a field the command line leaves out means "the preset's"."""
    model: str = "tiny"
    method: str = "pmc"
    split: str | None = None  # default: forget10 (forget01 under the CPU protocol)
    protocol: str | None = None  # full, cpu or slice (PROTOCOLS); default: cpu for a real model on a CPU, else full
    data_dir: str | None = None
    out: str | None = None
    device: str = "cpu"
    seed: int = 0
    evals: list[str] = field(default_factory=list)
    eval_samples: int | None = None
    eval_temperature: float = 1.0
    full_eval: bool = False
    limit: int | None = None
    save_every: int = 1
    finetune_epochs: int | None = None
    reference: str | None = None
    reference_model: str | None = None
    reference_logs: str | None = None  # an open-unlearning TOFU_EVAL.json: forget quality's reference
    probe_text: str | None = None
    forget_questions: str | None = None
    retain: str | None = None
    forget_answers: str | None = None
    resume: str | None = None
    progress: bool = True
    unlearn_flags: dict = field(default_factory=dict)  # UnlearnConfig's fields the command line gave
    # settled from the checkpoint (`merged`):
    preset: str | None = None
    unlearn: UnlearnConfig | None = None
    finetune: FinetuneConfig | None = None
    chat: dict | None = None

    def __post_init__(self) -> None:
        if self.protocol is None:
            self.protocol = "cpu" if self.model != "tiny" and self.device == "cpu" else "full"
        if not self.forget_questions:
            self.split = self.split or (CPU_PROTOCOL["split"] if self.protocol in SLICED else "forget10")

    @property
    def own_data(self) -> bool:
        """Your own forget questions, without their answers (own_data.py)."""
        return bool(self.forget_questions)

    @property
    def tiny_default(self) -> bool:
        """The embedded model on its own data."""
        return self.model == "tiny" and not self.data_dir

    def given(self) -> dict:
        """The settings as given (the fields that `merged` does not settle): what run.json keeps
        and --resume rebuilds a RunConfig from."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SETTLED}

    def unlearn_config(self, preset: str, parameters: int = 0) -> UnlearnConfig:
        """UnlearnConfig's defaults, then the preset's (and the protocol's), then the command line's,
        then the dtypes this device and a model of this many parameters do best in; checked."""
        cfg = dict(preset_settings(preset, self.protocol)["unlearn"])
        cfg.update({k: v for k, v in self.unlearn_flags.items() if v is not None})
        cfg["method"], cfg["seed"] = self.method, self.seed
        if cfg.get("top_k") == 0:
            cfg["top_k"] = None
        bf16 = bf16_by_default(self.device, parameters)  # a GPU: 3-4x faster draws; docs/benchmarks.md
        if cfg.get("sample_dtype") is None and bf16:
            cfg["sample_dtype"] = "bfloat16"
        if cfg.get("train_dtype") is None:
            cfg["train_dtype"] = "bfloat16" if bf16 else "float32"
        if cfg.get("lora_rank") is not None and cfg.get("lora_alpha") is None:
            cfg["lora_alpha"] = 2 * cfg["lora_rank"]  # recorded in results.json as the run used it
        cfg = UnlearnConfig(**cfg)
        cfg.validate()
        return cfg

    def merged(self, preset: str, parameters: int = 0) -> None:
        """Settle every default from the checkpoint's preset (`PRESETS`) and its size."""
        settings = preset_settings(preset, self.protocol)
        self.preset, self.unlearn, self.chat = preset, self.unlearn_config(preset, parameters), settings["chat"]
        finetune = {**settings["finetune"], **({} if self.finetune_epochs is None else {"epochs": self.finetune_epochs}),
                    "train_dtype": self.unlearn.train_dtype}
        if self.own_data:
            finetune["epochs"] = 0  # your own data: no TOFU fine-tuning
        self.finetune = FinetuneConfig(**finetune)
        self.eval_samples = self.eval_samples or settings["eval_samples"]


SETTLED = ("preset", "unlearn", "finetune", "chat")
UNLEARN_FLAGS = tuple(f.name for f in fields(UnlearnConfig) if f.name not in ("method", "seed"))

__all__ = ["Sampling", "UnlearnConfig", "FinetuneConfig", "RunConfig", "PRESETS", "CPU_PROTOCOL", "PROTOCOLS", "METHODS",
           "EVALS", "bf16_by_default", "preset_settings", "sampling_problems"]
