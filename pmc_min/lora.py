"""LoRA (Hu et al., 2021): the base weights frozen, a low-rank update trained beside each
target projection, W x + (alpha / r) B A x, with A (r, in) and B (out, r). As PEFT's
`LoraLayer` does it (peft/tuners/lora/layer.py): A starts Kaiming-uniform (a = sqrt(5), as
nn.Linear's weight), B at zero, so training starts from the base model exactly; no dropout
(PMC's draws and the tests stay deterministic); biases stay frozen.

A run with `--lora RANK` trains these adapters only: 16 bytes a parameter of AdamW state
for a few million parameters instead of the whole model (tests/benchmarks/memory_table.py).
Its checkpoints hold the frozen base in HF's layout and the adapter beside it; the finished
run writes the merged model (W + (alpha / r) B A, what transformers loads as a plain
checkpoint) and the adapter in PEFT's layout (`adapter_config.json`,
`adapter_model.safetensors`), which `peft.PeftModel.from_pretrained` loads onto the base.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError

# PEFT's usual targets: every attention and MLP projection, named as in HF's checkpoints
TARGETS = {"phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
           "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
           "gemma3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


class LoRALinear(nn.Module):
    """base(x) + scaling * B(A(x)), base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha, self.scaling = base, rank, alpha, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def check_targets(model_type: str, targets: list[str] | None) -> list[str]:
    """The projections to adapt (default: all of `TARGETS`); one sentence naming any this
    architecture does not have."""
    if model_type not in TARGETS:
        raise UserError(f"--lora cannot adapt {model_type} models: pmc_min adapts Phi, Llama and Gemma 3.")
    missing = [t for t in targets or [] if t not in TARGETS[model_type]]
    if missing:
        raise UserError(f"--lora cannot adapt this {model_type} model: it has no linear projection named "
                        f"{', '.join(missing)} (it has {', '.join(TARGETS[model_type])}).")
    return list(targets or TARGETS[model_type])


def attach(model: nn.Module, rank: int, alpha: float | None = None, targets: list[str] | None = None) -> list[str]:
    """Freeze every weight of model and put an adapter of this rank beside each target projection
    (HF's module names; default: `TARGETS` of its architecture). Returns the adapted modules' names;
    one sentence when a target is not there or a rank is not positive."""
    model_type = model.config.model_type
    if rank < 1:
        raise UserError(f"--lora takes a rank of 1 or more, not {rank}.")
    targets = check_targets(model_type, targets)
    alpha = 2 * rank if alpha is None else alpha
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            hf = hf_name(f"{name}.{child_name}", model_type).rsplit(".", 1)[-1]  # dense -> o_proj for Llama, Gemma
            if hf in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                adapted.append(f"{name}.{child_name}" if name else child_name)
    model.lora = {"rank": rank, "alpha": alpha, "targets": list(targets)}
    return adapted


def attached(model: nn.Module) -> bool:
    return getattr(model, "lora", None) is not None


def adapters(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights under their plain names (what checkpoint.save writes)."""
    return {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the plain model that computes what the adapted one does."""
    state = base_state(model)
    with torch.no_grad():
        for name, m in adapters(model).items():
            state[f"{name}.weight"] = m.merged_weight()
    return state


def hf_name(name: str, model_type: str) -> str:
    """A module's name as HF's checkpoints have it (`checkpoint.to_hf_name`)."""
    from .checkpoint import to_hf_name

    return to_hf_name(f"{name}.weight", model_type).removesuffix(".weight")


def peft_key(name: str, model_type: str) -> str:
    """An adapted module's name -> PEFT's prefix for it: base_model.model.<HF's module name>."""
    return "base_model.model." + hf_name(name, model_type)


def save_adapter(model: nn.Module, folder: str | Path, base_model: str | None = None) -> None:
    """adapter_config.json and adapter_model.safetensors in PEFT's layout."""
    folder, model_type = Path(folder), model.config.model_type
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, m in adapters(model).items():
        key = peft_key(name, model_type)
        tensors[f"{key}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    settings = model.lora
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": settings["rank"], "lora_alpha": settings["alpha"], "target_modules": sorted(settings["targets"]),
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_outputs(model: nn.Module, tokenizer, out: Path, base: str) -> None:
    """A finished LoRA run's <out>/model (merged, a plain checkpoint) and <out>/adapter (PEFT's
    layout, for the base model it names), each written whole or not at all."""
    from .checkpoint import replace_atomic, save_atomic

    save_atomic(model, tokenizer, out / "model", state=merged_state(model))
    replace_atomic(out / "adapter", lambda tmp: save_adapter(model, tmp, base))


def load_adapter(model: nn.Module, folder: str | Path) -> None:
    """Attach and fill the adapter `save_adapter` wrote in folder (a resumed run's checkpoint)."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    attach(model, config["r"], config["lora_alpha"], config["target_modules"])
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    with torch.no_grad():
        for name, m in adapters(model).items():
            key = peft_key(name, model.config.model_type)
            m.lora_A.weight.copy_(tensors[f"{key}.lora_A.weight"])
            m.lora_B.weight.copy_(tensors[f"{key}.lora_B.weight"])


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
