"""Gemma 3 (text), written by hand beside Phi and Llama (model.py), with the same interface.

What makes Gemma 3 differ from Llama, each in one place below:
- the token embedding is multiplied by sqrt(hidden_size);
- RMSNorm scales by (1 + weight), computed in float32 and cast after the product;
- four norms per block: input, post-attention (on the attention's output, before the
  residual add), pre-feed-forward, post-feed-forward (likewise);
- per-head RMSNorm on queries and keys, before the rotary embedding;
- grouped-query attention whose head_dim is independent of the width, scores scaled by
  query_pre_attn_scalar^-0.5 instead of head_dim^-0.5;
- sliding-window attention on the layers `layer_types` names "sliding_attention" (a query
  sees the last `sliding_window` positions, itself included), with their own rotary base
  (`rope_local_base_freq`); the global layers use `rope_theta` and its linear scaling;
- GeGLU: down(gelu_tanh(gate(x)) * up(x));
- tied embeddings, and tanh soft-caps on the logits when the config sets them.

Parameter names follow HF's `Gemma3ForCausalLM` without its `model.` prefix, except the two
that model.py names otherwise for Llama too: `self_attn.dense` (o_proj) and `final_layernorm` (norm).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from . import model as base
from .kv_cache import additive, attention, attention_layout

base.ACTIVATIONS["gemma3"] = ("gelu_pytorch_tanh",)


@dataclass
class GemmaConfig(base.Config):
    """Defaults as transformers' Gemma3TextConfig has them (a multimodal checkpoint's text_config
    states only what differs)."""
    model_type: str = "gemma3"
    vocab_size: int = 262208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 131072
    bos_token_id: int | None = 2
    eos_token_id: int | None = 1
    pad_token_id: int | None = 0
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: float = 256.0
    sliding_window: int = 4096
    layer_types: list | None = None  # None: sliding_window_pattern - 1 sliding layers, then one global, repeated
    sliding_window_pattern: int = 6
    rope_local_base_freq: float = 10000.0
    rope_scaling: dict | None = None  # global layers only: {"rope_type": "linear", "factor": f} or None
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer_types is None:
            self.layer_types = ["full_attention" if (i + 1) % self.sliding_window_pattern == 0 else "sliding_attention"
                                for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {"sliding_attention",
                                                                                      "full_attention"}:
            raise base.ConfigError(f"layer_types must name sliding_attention or full_attention for each of the "
                                   f"{self.num_hidden_layers} layers, not {self.layer_types}.")
        if self.attn_logit_softcapping is not None:
            raise base.ConfigError("attn_logit_softcapping (Gemma 2) is not supported; Gemma 3 sets none.")


class Rotary(base.RotaryEmbedding):
    """One rotary table: the global layers' (rope_theta, linearly scaled when the config says so)
    or the sliding layers' (rope_local_base_freq, never scaled)."""

    def __init__(self, cfg: GemmaConfig, local: bool):
        nn.Module.__init__(self)
        self.dim, self.theta = cfg.head_dim, cfg.rope_local_base_freq if local else cfg.rope_theta
        self.factor = 1.0 if local or not cfg.rope_scaling else float(cfg.rope_scaling["factor"])
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device=None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (self.theta ** exponents) / self.factor


class RMSNorm(base.RMSNorm):
    """x / rms(x) * (1 + weight), in float32, cast back after the product (weight starts at 0)."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight.float())).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.dense = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_bias)  # o_proj
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        # attention() scales by head_dim^-0.5; Gemma by query_pre_attn_scalar^-0.5 (the same for Gemma-3-270M)
        self.q_scale = (self.head_dim / cfg.query_pre_attn_scalar) ** 0.5
        self.cache = None  # the sampler's (kv_cache.py), during generation

    def forward(self, x, cos, sin, mask, write_pos):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = base.apply_rotary(q, cos, sin), base.apply_rotary(k, cos, sin)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        y = attention(q, k, v, mask) if self.cache is None else self.cache.attend(q, k, v, mask, write_pos)
        return self.dense(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    """x + post_attn_norm(attn(input_norm(x))), then + post_ffw_norm(mlp(pre_ffw_norm(.)))."""

    def __init__(self, cfg: GemmaConfig, layer_type: str):
        super().__init__()
        self.sliding = layer_type == "sliding_attention"
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, write_pos):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, write_pos))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3(base.Transformer):
    """The same interface as model.Transformer: forward(input_ids, attention_mask, write_pos,
    last_only, kv_len, keep) -> logits, and one attention module per layer whose `cache` the sampler sets."""

    def __init__(self, cfg: GemmaConfig):
        nn.Module.__init__(self)
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary, self.rotary_local = Rotary(cfg, local=False), Rotary(cfg, local=True)
        self.layers = nn.ModuleList(Block(cfg, t) for t in cfg.layer_types)
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        self.kept_cache: dict[tuple, torch.Tensor] = {}

    def forward(self, input_ids, attention_mask=None, write_pos=None, last_only=False, kv_len=None, keep=None):
        allowed, positions, pos, slots, write_pos = attention_layout(self, input_ids, attention_mask, write_pos,
                                                                          kv_len)
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)  # rounded to the weights' dtype, as HF
        window = pos[:, None] - slots[None, :] < self.config.sliding_window  # (T, S): the last `window` slots
        # Left padding is contiguous, so slot distance is position distance between real tokens.
        masks = {False: additive(allowed, x.dtype), True: additive(allowed & window, x.dtype)}
        rope = {False: self.rotary(positions, x.dtype), True: self.rotary_local(positions, x.dtype)}
        for layer in self.layers:
            x = layer(x, *rope[layer.sliding], masks[layer.sliding], write_pos)
        logits = self.head(x, last_only, keep)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap


def config_from_hf(d: dict) -> GemmaConfig:
    """config.json of `gemma3_text`, or the `text_config` of a multimodal `gemma3`, in the
    transformers-4 layout (rope_theta, rope_local_base_freq, rope_scaling at top level, as the hub
    ships Gemma 3) or the transformers-5 one (rope_parameters per layer type)."""
    if d.get("model_type") == "gemma3":  # its ids live at the top; the text model's settings in text_config
        ids = {k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if d.get(k) is not None}
        d = {**ids, **(d.get("text_config") or {})}
    d = dict(d)
    d.setdefault("sliding_window_pattern", d.get("_sliding_window_pattern"))
    rope = d.pop("rope_parameters", None) or {}
    if "full_attention" in rope:
        d["rope_theta"], d["rope_scaling"] = rope["full_attention"].get("rope_theta"), rope["full_attention"]
    if "sliding_attention" in rope:
        if rope["sliding_attention"].get("rope_type", "default") != "default":
            raise base.ConfigError("Scaled rotary embeddings on the sliding layers are not supported.")
        d["rope_local_base_freq"] = rope["sliding_attention"].get("rope_theta")
    scaling = d.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise base.ConfigError(f"rope_type {kind!r} is not supported for Gemma 3; 'default' or 'linear'.")
    d["rope_scaling"] = {"rope_type": "linear", "factor": scaling["factor"]} if kind == "linear" else None
    d["hidden_act"] = d.pop("hidden_activation", None) or d.get("hidden_act")
    if d.get("use_bidirectional_attention"):
        raise base.ConfigError("use_bidirectional_attention (an encoder) is not supported; PMC needs a causal LM.")
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = d["eos_token_id"][0]
    d["model_type"] = "gemma3"
    return GemmaConfig(**{f.name: d[f.name] for f in fields(GemmaConfig) if d.get(f.name) is not None})


def config_to_hf(cfg: GemmaConfig) -> dict:
    """The layout the hub ships Gemma 3 in (transformers-4 keys), which transformers 4 and 5 read."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for key in ("layer_norm_eps", "qk_layernorm", "partial_rotary_factor", "hidden_act", "sliding_window_pattern"):
        d.pop(key)
    return {"architectures": ["Gemma3ForCausalLM"], **d, "model_type": "gemma3_text",
            "hidden_activation": cfg.hidden_act, "attention_dropout": 0.0}
