"""Batched top-p sampling with a static KV cache: PMC's inner loop.

Every epoch PMC draws n answers to every forget question from the current
model (paper Sec. 3; docs/method.md §2, step 2), so this is where its time goes. The
design follows gpt-fast: prompts x n rows left-padded into one batch, one
prefill per prompt, then one token per step into a preallocated cache in
which the n samples of a prompt share its keys and values (read once per
step, not n times: `kv_cache.SharedPrefixKV`). Temperature, top-k and top-p
filtering and the draw itself stay on the device (the draw inverts the CDF
at one uniform per row, with no host sync); the all-finished check syncs
only every few steps. Large jobs are cut into batches by a token budget.
Every sample row draws from its own counter-based stream (`rng`), so a
prompt's samples depend on its seed only, not on its batch or position.
"""

from __future__ import annotations

import warnings

import torch

from . import rng
from .config import Sampling  # noqa: F401 (re-exported: the sampler's settings)
from .kv_cache import clear_cache, setup_cache, share_prefix
from .model import Transformer
from .tokenizer import Tokenizer


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus), as HF's
    Temperature/TopK/TopPLogitsWarper chain: removed tokens become -inf.
    Top-k keeps every token at least as large as the k-th. Top-p sorts the
    survivors ascending (equal logits by vocabulary index) and drops those whose
    cumulative probability is <= 1 - p, keeping the most likely one; so the kept
    tokens are the first r of the descending order. logits: (B, V) float32.

    Only the k largest logits are sorted (torch.topk), not the whole vocabulary:
    after top-k nothing else has mass but ties of the k-th. Without top-k, k = V.
    The tie arithmetic below pays for itself: on PMC's draw (80 rows, top-k 50)
    on a 2-core CPU this is 1.3-1.4x, 2.2-2.3x and 1.5x faster than the plain
    full sort at vocabularies of 1,024, 51,200 and 128,256
    (`tests/benchmarks/filter.py`), with the same tokens kept."""
    temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
    if temperature != 1.0:
        logits = logits / temperature
    V = logits.shape[-1]
    k = min(top_k or V, V)
    if k == V and top_p >= 1.0:
        return logits
    top, index = torch.topk(logits, k)  # (B, k), descending
    kth = top[..., -1:]
    if k < V:
        logits = torch.where(logits < kth, float("-inf"), logits)
    if top_p >= 1.0:
        return logits
    mass = logits.softmax(-1).gather(-1, index)  # the listed tokens' probabilities
    ties = (logits >= kth).sum(-1, keepdim=True) - k  # survivors equal to the k-th but not listed
    # Ascending, the unlisted ties come first, then the listed tokens from the last.
    ascending = mass.flip(-1).cumsum(-1).flip(-1) + ties * mass[..., -1:]  # each one's cumulative probability
    kept = (ascending > 1 - top_p).sum(-1, keepdim=True).clamp(min=1)  # a prefix of the listed tokens
    dropped_ties = ((1 - top_p) / mass[..., -1:]).floor().minimum(ties).long()
    kept += torch.where(kept == k, ties - dropped_ties, 0)
    cut = top.gather(-1, kept.clamp(max=k) - 1)  # the value of the last kept token
    # Of the tokens equal to the cut, the last in vocabulary order are the first kept:
    # those after which fewer than `wanted` equal ones follow.
    equal = logits == cut
    wanted = kept - (top > cut).sum(-1, keepdim=True)  # every token above the cut is listed
    seen = equal.cumsum(-1)  # equal tokens up to and including each
    keep = (logits > cut) | (equal & (seen > seen[..., -1:] - wanted))
    return torch.where(keep, logits, float("-inf"))


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row from probs (B, V), without a host sync (unlike
    torch.multinomial): invert the CDF at the row's uniform u (B,) in [0, 1). The
    first index whose cumulative probability exceeds u always has probability > 0."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = u[:, None].to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def draw_listed(logits: torch.Tensor, sampling: Sampling, k: int, u: torch.Tensor) -> torch.Tensor | None:
    """What `draw(filter_logits(logits, sampling).softmax(-1), u)` picks, computed on the 2k largest
    logits alone (top-k keeps the k-th's ties too, and they are among those 2k unless more than k
    tie), or None where some row's ties of the k-th run past the 2k. Every full-vocabulary pass
    after torch.topk goes (temperature, softmax, comparisons, two cumsums): on a 2-core CPU those
    cost more than the model's own step at a 262k vocabulary (`tests/benchmarks/sampler.py`). The
    same tokens: the same kept set, the same order of the cumulative sums; only softmax's
    normaliser adds the same terms in another order (a last-bit difference, which moves a draw
    only where u falls within it of a boundary). bfloat16 logits tie often, hence the 2k. Its
    tie check reads one bool on the host: for CPUs (no device to sync)."""
    m = min(2 * k, logits.shape[-1])
    top, index = torch.topk(logits, m)  # descending
    top = top.float()
    if sampling.temperature != 1.0:  # x / T is monotone: the same top m, the same values as dividing all
        top = top / sampling.temperature
    kth = top[:, k - 1:k]
    if m < logits.shape[-1] and bool((top[:, -1:] == kth).any()):
        return None
    top = top.masked_fill(top < kth, float("-inf"))  # top-k: the k largest and their ties
    if sampling.top_p < 1.0:
        # Descending, equal logits by index descending: HF's ascending stable sort, reversed.
        by_index = index.argsort(-1, descending=True)
        top, index = top.gather(-1, by_index), index.gather(-1, by_index)
        by_value = top.argsort(dim=-1, descending=True, stable=True)
        top, index = top.gather(-1, by_value), index.gather(-1, by_value)
        ascending = top.softmax(-1).flip(-1).cumsum(-1).flip(-1)  # each one's cumulative probability
        kept = (ascending > 1 - sampling.top_p).sum(-1, keepdim=True).clamp(min=1)  # a prefix of the list
        top = top.masked_fill(torch.arange(m, device=top.device) >= kept, float("-inf"))
    in_vocab_order = index.argsort(-1)  # the order in which draw's cumulative sum meets them
    top, index = top.gather(-1, in_vocab_order), index.gather(-1, in_vocab_order)
    cdf = top.softmax(-1).cumsum(-1)
    picked = torch.searchsorted(cdf, u[:, None].to(cdf.dtype) * cdf[:, -1:], right=True)
    last = (top.isfinite() * torch.arange(m, device=top.device)).argmax(-1, keepdim=True)  # the last kept
    return index.gather(-1, picked.minimum(last)).squeeze(-1)


def pick_next(logits: torch.Tensor, sampling: Sampling | None, u: torch.Tensor | None) -> torch.Tensor:
    """The next token of each row: argmax, or a draw at the row's uniform u. Logits of a
    lower precision are compared as they are (float32 holds them exactly) and made float32
    only where arithmetic follows: on the listed tokens, or for the full filter."""
    if sampling is None:
        return logits.argmax(dim=-1)
    k = min(sampling.top_k or logits.shape[-1], logits.shape[-1])
    if k < logits.shape[-1] and logits.device.type == "cpu":
        token = draw_listed(logits, sampling, k, u)
        if token is not None:
            return token
    return draw(filter_logits(logits.float(), sampling).softmax(dim=-1), u)


SHAPE_STEP = 64


def round_up(x: int, step: int) -> int:
    return -(-x // step) * step


@torch.inference_mode()
def generate_batch(model: Transformer, prompts: list[list[int]], n: int, max_new_tokens: int | list[int],
                   eos_id: int, pad_id: int, sampling: Sampling | None = None, seeds: list[int] | None = None,
                   sync_every: int = 8, decode=None, static: bool | None = None) -> list[list[int]]:
    """n completions for each prompt of one batch (rows prompt-major), each cut
    before its first eos and after its prompt's budget of new tokens (max_new_tokens:
    one for all, or one per prompt). Each prompt is prefilled once; its n sample rows
    then share its cached keys and values, and start from copies of its last logits.

    decode: the decode step (default: the model itself). static: fixed shapes and a
    cache kept from call to call, as a CUDA graph needs; the default is static for
    a compiled step on a GPU. Otherwise every step attends to the slots in use only
    (on a CPU, a compiled step takes that length as a dynamic shape)."""
    device = model.device
    real_rows = len(prompts) * n
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    T = max(budgets)  # steps
    U, P = len(prompts), max(len(p) for p in prompts)
    S = P + T
    if static is None:
        static = decode is not None and device.type == "cuda"
    if static:  # shapes rounded up, so that few are ever compiled
        prompts = prompts + [prompts[0]] * (round_up(U, 8) - U)  # rows whose output is dropped
        budgets = budgets + [budgets[0]] * (len(prompts) - U)
        U, P = len(prompts), round_up(P, SHAPE_STEP)
        S = round_up(P + T, SHAPE_STEP)
    B = U * n
    limit = torch.tensor(budgets, device=device).repeat_interleave(n)  # (B,): each row's budget
    if sampling is not None:  # rows prompt-major: prompt i's n samples are rows i*n .. i*n + n-1
        u = torch.from_numpy(rng.uniforms(list(seeds) + [0] * (U - real_rows // n), n, T)).to(device)
    ids = torch.full((U, P), pad_id, dtype=torch.long)
    key_mask = torch.ones(U, S, dtype=torch.long)  # future slots may stay 1: causality hides them
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        key_mask[b, :P - len(p)] = 0
    ids, key_mask = ids.to(device), key_mask.to(device)

    setup_cache(model, U, S, keep=static)
    try:
        logits = model(ids, key_mask, last_only=True, kv_len=P)[:, -1]  # (U, V): slots 0 .. P-1
        if n > 1:
            share_prefix(model, n, P, keep=static)
            logits, key_mask = logits.repeat_interleave(n, dim=0), key_mask.repeat_interleave(n, dim=0)
        out = torch.full((B, T), pad_id, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        pos = torch.tensor([P], device=device) if static else None  # a static step's slot, as data
        step = model if decode is None else decode
        for t in range(T):
            token = pick_next(logits, sampling, None if sampling is None else u[:, t])
            token = token.masked_fill(done, pad_id)  # finished rows keep emitting pad
            out[:, t] = token
            done |= (token == eos_id) | (limit <= t + 1)
            if t + 1 == T or ((t + 1) % sync_every == 0 and bool(done.all())):
                break
            if static:  # the slot is data, so that one captured graph serves every step
                logits = step(token[:, None], key_mask, pos, last_only=True)[:, -1]
                pos += 1
            else:  # slot P + t, attending to the P + t + 1 slots in use
                logits = step(token[:, None], key_mask, last_only=True, kv_len=P + t + 1)[:, -1]
    finally:
        clear_cache(model)
    rows = [row[:budget] for row, budget in zip(out[:real_rows].tolist(), limit.tolist())]
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


def compiled_decode(model: Transformer):
    """The decode step, compiled by torch.compile. On a GPU it is captured as a CUDA
    graph (mode "reduce-overhead", static shapes), so that a step is one launch rather
    than hundreds of small kernels each waiting on Python. On a CPU the step is bound
    by reading the cache, so it keeps attending to the slots in use only: the number
    of slots is a dynamic shape, and one compilation serves every step, batch size and
    prompt length (but the first step, whose single generated slot gets its own)."""
    if model.device.type == "cuda":
        return torch.compile(model, fullgraph=True, dynamic=False, mode="reduce-overhead")
    return torch.compile(model, fullgraph=True, dynamic=True)


def prompt_seeds(seed: int | list[int] | None, count: int) -> list[int]:
    """One seed per prompt: as given, derived from the call's seed, or fresh."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"Bad sampling setting: {len(seed)} seeds for {count} prompts.")
        return list(seed)
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()).item())
    return [rng.seed_of(seed, i) for i in range(count)]


LEGACY_SAMPLING = ("temperature", "top_p", "top_k", "greedy")  # generate's keywords before `Sampling`


def legacy_sampling(sampling: Sampling | None, old: dict, where: str) -> Sampling | None:
    """The Sampling that the keywords of generate and generate_ids before `Sampling` ask for
    (temperature=1.0, top_p=1.0, top_k=None, greedy=False), with a DeprecationWarning."""
    unknown = sorted(set(old) - set(LEGACY_SAMPLING))
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if not old:
        return sampling
    if sampling is not None:
        raise TypeError(f"{where}() takes sampling=Sampling(...) or the deprecated {', '.join(old)}, not both.")
    warnings.warn(f"{where}(temperature=, top_p=, top_k=, greedy=) is deprecated and will be removed; pass "
                  f"sampling=pmc_min.Sampling(temperature, top_p, top_k), or sampling=None for greedy decoding.",
                  DeprecationWarning, stacklevel=3)
    if old.get("greedy"):
        return None
    return Sampling(old.get("temperature", 1.0), old.get("top_p", 1.0), old.get("top_k"))


def generate_ids(model: Transformer, prompts: list[list[int]], *, n: int = 1, max_new_tokens: int | list[int] = 200,
                 eos_id: int, pad_id: int, sampling: Sampling | None = None, seed: int | list[int] | None = None,
                 max_batch_tokens: int = 1 << 16, compile: bool = False, **deprecated) -> list[list[list[int]]]:
    """n completions (token ids, cut before eos) for each prompt; greedy (one each) without `sampling`.
    max_new_tokens: one budget for every prompt, or one per prompt.

    seed: one per prompt, or one for the call (prompt i then gets `rng.seed_of(seed, i)`),
    or None (a fresh one from torch's generator). A prompt's samples depend on its seed
    only, not on the other prompts of the call.

    Prompts are sorted by length (less padding) and cut into batches of at
    most max_batch_tokens cache slots (n rows of prompt + new tokens each)."""
    sampling = legacy_sampling(sampling, deprecated, "generate_ids")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    budgets = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    problems = []
    if n < 1:
        problems.append(f"n must be at least 1, not {n}")
    if len(budgets) != len(prompts):
        problems.append(f"{len(budgets)} budgets of new tokens for {len(prompts)} prompts")
    if any(b < 0 for b in budgets):
        problems.append(f"max_new_tokens must not be negative, not {min(budgets)}")
    if problems:
        raise ValueError(f"Bad sampling setting: {'; '.join(problems)}.")
    if sampling is None:
        n = 1
    seeds = prompt_seeds(seed, len(prompts)) if sampling is not None else [0] * len(prompts)
    decode = compiled_decode(model) if compile else None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[list[list[int]]] = [[] for _ in prompts]
    start = 0
    while start < len(order):
        size, width = 0, 0  # the batch's prompts and its cache slots per row
        while start + size < len(order):
            i = order[start + size]
            width = max(width, len(prompts[order[start]]) + budgets[i])  # the longest prompt comes first
            if size and n * width * (size + 1) > max_batch_tokens:
                break
            size += 1
        batch = order[start:start + size]
        outs = generate_batch(model, [prompts[i] for i in batch], n, [budgets[i] for i in batch], eos_id, pad_id,
                              sampling, [seeds[i] for i in batch], decode=decode)
        for j, i in enumerate(batch):
            results[i] = outs[j * n:(j + 1) * n]
        start += size
    return results


def generate(model: Transformer, tokenizer: Tokenizer, prompts: list[str], *, n: int = 1,
             max_new_tokens: int = 200, sampling: Sampling | None = None, seed: int | None = None,
             max_batch_tokens: int = 1 << 16, compile: bool = False, **deprecated) -> list[list[str]]:
    """n decoded answers for each prompt (one list per prompt); greedy without `sampling`."""
    sampling = legacy_sampling(sampling, deprecated, "generate")
    ids = generate_ids(model, tokenizer.encode_batch(prompts, bos=True), n=n, max_new_tokens=max_new_tokens,
                       eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, sampling=sampling, seed=seed,
                       max_batch_tokens=max_batch_tokens, compile=compile)
    return [tokenizer.decode_batch(per_prompt) for per_prompt in ids]
