"""Phi-1.5 and Llama, written by hand: the causal language models PMC unlearns.

One file, read top to bottom: config, rotary embedding, attention, the two
MLPs, the two blocks, the model. Phi (the paper's Phi-1.5) has a parallel
block with one LayerNorm, biases everywhere, partial rotary and gelu_new;
Llama (the paper's Llama-3.2-3B-Instruct) has sequential pre-norm blocks
with RMSNorm, grouped-query attention, a SwiGLU MLP, full rotary with the
llama3 frequency scaling, and often tied embeddings. Parameter names follow
HF's `PhiForCausalLM` without its `model.` prefix; `checkpoint.py` maps
Llama's few different names.

Attention masks are *key* masks: `attention_mask[b, j] = 1` when key slot j
of row b holds a real token. With left padding, each row's position ids are
derived from that mask (`cumsum - 1`), exactly as HF's `generate` derives
them, so a padded row computes the same logits as the unpadded sequence.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .kv_cache import additive, attention, attention_layout
from .losses import causal_lm_loss, labelled_nll, next_token_nll  # noqa: F401 (their home before losses.py)


class ConfigError(UserError):
    """A config.json that does not describe a model this file can build."""


ACTIVATIONS = {"phi": ("gelu_new", "gelu_pytorch_tanh"), "llama": ("silu",)}  # gemma.py adds Gemma 3's


@dataclass
class Config:
    model_type: str = "phi"  # "phi" or "llama"
    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    qk_layernorm: bool = False
    hidden_act: str = "gelu_new"
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6  # Llama
    attention_bias: bool = True  # Phi: True; Llama: False
    rope_scaling: dict | None = None  # Llama 3: {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        expected_act = ACTIVATIONS[self.model_type]
        if self.hidden_act not in expected_act:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported for {self.model_type}; "
                              f"expected {expected_act[0]!r}.")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


class RotaryEmbedding(nn.Module):
    """RoPE on the first `rotary_dim` dims of each head (Phi's *partial* rotary);
    cos/sin are computed in float32 and cast to the activations' dtype, as HF does."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.dim, self.theta, self.scaling = cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device=None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        inv_freq = 1.0 / (self.theta ** exponents)
        return llama3_scaling(inv_freq, self.scaling) if self.scaling else inv_freq

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def llama3_scaling(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's long-context RoPE: wavelengths longer than the original
    context / low_freq_factor are slowed by `factor`, shorter than
    context / high_freq_factor are kept, and those between are interpolated."""
    context, low, high = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / s["factor"], inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    between = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(between, (1 - smooth) * scaled / s["factor"] + smooth * scaled, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, head_dim); cos, sin: (B, T, rotary_dim). Only the first rotary_dim dims turn."""
    d = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :d], x[..., d:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.dense = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.model_type == "phi")  # o_proj
        if cfg.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
        self.qk_layernorm = cfg.qk_layernorm
        self.cache = None  # the sampler's (kv_cache.py), during generation

    def forward(self, x, cos, sin, mask, write_pos):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # (B, H, T, D); a cache also stores k and v at write_pos and attends over every slot in use
        y = attention(q, k, v, mask) if self.cache is None else self.cache.attend(q, k, v, mask, write_pos)
        return self.dense(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class PhiMLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_new


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as Llama does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


NORMS = (nn.LayerNorm, RMSNorm)  # the norm layers, whose weights HF's Trainer does not decay


class LlamaBlock(nn.Module):
    """Llama's sequential pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin, mask, write_pos):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, write_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class PhiBlock(nn.Module):
    """Phi's parallel block: one LayerNorm feeds attention and MLP, both added to the residual."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg)
        self.mlp = PhiMLP(cfg)

    def forward(self, x, cos, sin, mask, write_pos):
        h = self.input_layernorm(x)
        return x + self.self_attn(h, cos, sin, mask, write_pos) + self.mlp(h)


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg)
        llama = cfg.model_type == "llama"
        self.layers = nn.ModuleList((LlamaBlock if llama else PhiBlock)(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = (RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if llama
                                else nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=not llama)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        self.kept_cache: dict[tuple, torch.Tensor] = {}  # cache tensors kept between generations (kv_cache.zeros)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @torch.no_grad()
    def load_weights_from(self, other: "Transformer") -> None:
        """Copy other's weights into this model's own tensors, in place, converting dtype
        (PMC's low-precision sampling copy, refreshed before every draw)."""
        for mine, theirs in zip(self.parameters(), other.parameters(), strict=True):
            mine.copy_(theirs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                write_pos: torch.Tensor | None = None, last_only: bool = False,
                kv_len: int | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for input_ids (B, T); (B, 1, V) with last_only; (K, V) with keep,
        a (B, T) bool mask: the positions where it is True, packed in row-major order (a loss
        needs the head only where a label follows, see `labelled_nll`).

        Without a cache, attention_mask is (B, T) and may pad on the left or the
        right. With a cache (`kv_cache.setup_cache`), the T tokens go to the cache
        slots `write_pos` (T,) and attention_mask is (B, S), a key mask over all S
        cache slots: 1 for every real token (slots not yet written may be 1
        too: causality hides them). kv_len, when the caller knows it, limits
        attention to the first kv_len slots: less work, but a shape that
        changes every step (a CUDA graph needs static shapes: leave it None there).
        write_pos defaults to the T slots just before kv_len (or the first T).
        """
        allowed, positions, _, _, write_pos = attention_layout(self, input_ids, attention_mask, write_pos, kv_len)
        x = self.embed_tokens(input_ids)
        mask = additive(allowed, x.dtype)
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, write_pos)
        return self.head(x, last_only, keep)

    def head(self, x: torch.Tensor, last_only: bool = False, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The final norm and the output projection, on the positions asked for (see forward)."""
        if last_only:
            x = x[:, -1:]
        elif keep is not None:
            x = x[keep]
        return self.lm_head(self.final_layernorm(x))


def refresh_rotary(model: nn.Module, device=None) -> None:
    """Compute the rotary tables again, in float32: a model built on the meta device has none, and
    casting a model to bfloat16 casts them too (0.9 rad of phase by position 500 for Gemma's)."""
    for m in model.modules():
        if isinstance(m, RotaryEmbedding):
            m.inv_freq = m.compute_inv_freq(device)


def autocast(device: torch.device, dtype: str | None = None):
    """bfloat16 autocast (the weights stay float32) where dtype is "bfloat16", and by default
    on a GPU; nothing for "float32", nor by default on a CPU (evaluation stays float32 there)."""
    if dtype == "bfloat16" or (dtype is None and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["Config", "ConfigError", "NORMS", "Transformer", "autocast", "causal_lm_loss", "labelled_nll",
           "next_token_nll"]
