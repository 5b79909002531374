"""The static key/value caches PMC's sampler decodes with (gpt-fast style).

A cache is preallocated with fixed shapes, so that a decode step can be
captured by torch.compile / CUDA graphs. The sampler allocates the caches
(`setup_cache`, then `share_prefix` once a batch's prompts are prefilled)
and hangs one on each layer's attention, which only calls its `attend`:

- `KVCache`: one row of keys and values per batch row.
- `SharedPrefixKV`: the cache once U prompts are prefilled and each gets n
  sample rows. A prompt's keys and values are kept once, not copied n times;
  only the tokens generated after them are cached per sample. A decode step
  of a large batch is bound by reading the cache; with PMC's n = 5 samples
  per question the prompt part is read 5x less.

Both take the positions being written, `write_pos`: a slice when the caller
knows them, a tensor of slot indices in a decode step captured as a CUDA
graph (where the slot is data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, each kv head shared by its group of query heads (GQA).
    q (B, H, T, D); k, v (B, H_kv, S, D); mask additive, (B, 1, T, S). Under a CPU's bfloat16
    autocast it computes in float32: its bfloat16 backward is the slower (a SmolLM2 training step
    15% faster so, docs/benchmarks.md)."""
    if q.device.type == "cpu" and cpu_autocast():
        with torch.autocast("cpu", enabled=False):
            return attention(q.float(), k.float(), v.float(), mask.float())
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)


def cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def attention_layout(model, input_ids, attention_mask, write_pos, kv_len):
    """What every layer's attention may see: (allowed (B, T, S) bool, positions (B, T), the written
    slots pos (T,), all slots (S,), write_pos), for the arguments of `Transformer.forward`."""
    B, T = input_ids.shape
    if write_pos is None:  # the slots are known here, so the cache is written by a plain copy
        end = T if kv_len is None else kv_len
        pos = torch.arange(end - T, end, device=input_ids.device)
        write_pos = slice(end - T, end)
    else:  # the slots are data (a decode step captured as a CUDA graph)
        pos = write_pos
    cache = model.layers[0].self_attn.cache
    S = cache.n_slots if cache is not None else T
    if attention_mask is None:
        attention_mask = torch.ones(B, S, dtype=torch.long, device=input_ids.device)
    if attention_mask.shape != (B, S):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, S)}.")
    if kv_len is not None:
        S, attention_mask = kv_len, attention_mask[:, :kv_len]
    key_mask = attention_mask.bool()
    # Position of a token = number of real tokens up to and including it, minus one.
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, pos]  # (B, T)
    slots = torch.arange(S, device=input_ids.device)
    causal = slots[None, :] <= pos[:, None]  # (T, S)
    # A pad query sees only itself, so its (unused) row stays finite instead of NaN.
    allowed = (causal & key_mask[:, None, :]) | (slots[None, :] == pos[:, None])  # (B, T, S)
    return allowed, positions, pos, slots, write_pos


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, S): 0 where a query may attend a key, -inf elsewhere, as SDPA makes a boolean mask."""
    return torch.where(allowed[:, None], 0.0, float("-inf")).to(dtype)


def write(cache: torch.Tensor, write_pos: slice | torch.Tensor, x: torch.Tensor) -> None:
    """cache[:, :, write_pos] = x for a cache (B, H_kv, S, D). A slice is a plain copy; a
    tensor of slot indices (a CUDA graph's step) is an index_copy_, slower on a CPU."""
    if isinstance(write_pos, slice):
        cache[:, :, write_pos] = x
    else:
        cache.index_copy_(2, write_pos, x)


class KVCache:
    """One layer's keys and values. A plain object, not a module: torch.compile then
    treats its tensors as inputs whose sizes may vary from batch to batch, not as
    fixed-size module buffers."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):  # each (batch, n_kv_heads, n_slots, head_dim), zeroed
        self.k, self.v = k, v

    @property
    def n_slots(self) -> int:
        return self.k.shape[2]

    def attend(self, q, k, v, mask, write_pos):
        """Write k, v (B, H_kv, T, D) at write_pos, then attend over the slots the mask covers."""
        write(self.k, write_pos, k)
        write(self.v, write_pos, v)
        S = mask.shape[-1]  # the slots in use
        dtype = self.k.dtype
        return attention(q.to(dtype), self.k[:, :, :S], self.v[:, :, :S], mask.to(dtype)).to(q.dtype)


class SharedPrefixKV:
    """The cache of U prompts x n samples (rows prompt-major: row u*n + j is sample j of
    prompt u): the prompt's keys and values once, the generated tokens' per row."""

    def __init__(self, prefilled: KVCache, n: int, prompt_len: int, k: torch.Tensor, v: torch.Tensor):
        """k, v: zeroed (U * n, H_kv, n_slots - prompt_len, D), for the generated tokens."""
        self.n = n
        self.prefix_k, self.prefix_v = prefilled.k[:, :, :prompt_len], prefilled.v[:, :, :prompt_len]
        self.k, self.v = k, v

    @property
    def n_slots(self) -> int:
        return self.prefix_k.shape[2] + self.k.shape[2]

    def attend(self, q, k, v, mask, write_pos):
        """Write the generated token's k, v (B, H_kv, 1, D) at write_pos, then softmax(q k^T / sqrt(D)) v
        over the prompt's and the row's own generated keys. q (B, H, 1, D); mask (B, 1, 1, S),
        additive, over slots [prompt | generated]. Returns (B, H, 1, D)."""
        P = self.prefix_k.shape[2]
        write_pos = slice(write_pos.start - P, write_pos.stop - P) if isinstance(write_pos, slice) else write_pos - P
        write(self.k, write_pos, k)
        write(self.v, write_pos, v)
        B, H, _, D = q.shape
        U, H_kv, P, _ = self.prefix_k.shape
        dtype, q, mask = q.dtype, q.to(self.k.dtype), mask.to(self.k.dtype)
        n, g, T = self.n, H // H_kv, mask.shape[-1] - P  # g query heads share a kv head (GQA)
        k, v = self.k[:, :, :T], self.v[:, :, :T]

        def by_prompt(x):  # (B, H_kv, g, X) -> (U, H_kv, n*g, X): one prompt's n samples x g heads as rows
            return x.reshape(U, n, H_kv, g, -1).transpose(1, 2).reshape(U, H_kv, n * g, -1)

        def by_row(x):  # the inverse
            return x.reshape(U, H_kv, n, g, -1).transpose(1, 2).reshape(B, H_kv, g, -1)

        q = q.reshape(B, H_kv, g, D) * D ** -0.5
        on_prompt = (by_prompt(q) @ self.prefix_k.transpose(-1, -2))  # (U, H_kv, n*g, P): prompt keys read once
        on_prompt = on_prompt + mask[::n, :, :, :P]  # left padding of the prompt
        on_generated = q @ k.transpose(-1, -2) + mask[:, :, :, P:]  # (B, H_kv, g, T)
        p = torch.cat([on_prompt, by_prompt(on_generated)], dim=-1).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        y = by_row(p[..., :P] @ self.prefix_v) + by_row(p[..., P:]) @ v  # (B, H_kv, g, D)
        return y.reshape(B, H, 1, D).to(dtype)


def zeros(model, key: tuple, shape: tuple, keep: bool) -> torch.Tensor:
    """A zeroed cache tensor. With keep, the tensor stays in `model.kept_cache` and the
    next call with the same key and shape reuses it: a decode step captured as a CUDA
    graph then finds its cache where it was recorded, and is replayed rather than
    captured again. (torch.compile takes tensors reached through the model's modules as
    fixed-address inputs, which a CUDA graph writes in place.)"""
    dtype = cache_dtype(model.dtype, model.device)
    if not keep:
        return torch.zeros(shape, dtype=dtype, device=model.device)
    t = model.kept_cache.get(key)
    if t is None or t.shape != shape or t.dtype != dtype or t.device != model.device:
        t = model.kept_cache[key] = torch.zeros(shape, dtype=dtype, device=model.device)
    return t.zero_()


def cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What the cache holds and attention computes in: the model's dtype, except float32 on a
    CPU, whose small bfloat16 attention products are slower than float32 ones (PMC's draw on
    SmolLM2 from bfloat16 weights: 8% faster so, docs/benchmarks.md) and less exact."""
    return torch.float32 if device.type == "cpu" else dtype


def setup_cache(model, batch: int, n_slots: int, keep: bool = False) -> None:
    """Give every layer a static cache of n_slots slots for `batch` rows."""
    c = model.config
    shape = (batch, c.num_key_value_heads, n_slots, c.head_dim)
    for i, layer in enumerate(model.layers):
        layer.self_attn.cache = KVCache(zeros(model, ("k", i), shape, keep), zeros(model, ("v", i), shape, keep))


def share_prefix(model, n: int, prompt_len: int, keep: bool = False) -> None:
    """After the prefill of prompt_len slots, let each cached row serve n sample rows
    (row b -> rows b*n .. b*n+n-1), its prompt's keys and values shared, not copied."""
    for i, layer in enumerate(model.layers):
        cache = layer.self_attn.cache
        U, H_kv, S, D = cache.k.shape
        shape = (U * n, H_kv, S - prompt_len, D)
        layer.self_attn.cache = SharedPrefixKV(cache, n, prompt_len, zeros(model, ("gen k", i), shape, keep),
                                               zeros(model, ("gen v", i), shape, keep))


def clear_cache(model) -> None:
    for layer in model.layers:
        layer.self_attn.cache = None
