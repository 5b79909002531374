"""The sampler against transformers' generate and warpers, and against the
distribution it should draw from."""

from collections import Counter

import pytest
import torch
from hypothesis import given, strategies as st
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import pmc_min
from pmc_min.rng import seed_of, uniforms
from pmc_min.sample import Sampling, draw, draw_listed, filter_logits, generate_ids
from helpers import write_hf_phi

PROMPTS = [[5, 17, 42, 9, 77, 3, 120], [8, 2], [33, 44, 55, 66], [200, 13, 7, 250, 31, 90, 11, 4, 19, 23], [61]]


def hf_greedy(hf, prompts, max_new_tokens, eos_id, pad_id=0):
    P = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                      eos_token_id=eos_id, pad_token_id=pad_id, top_k=None, top_p=None, temperature=None)
    rows = out[:, P:].tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


def early_eos_case(hf, max_new_tokens):
    """(eos, transformers' greedy rows): "eos" is the token most rows write at some point
    when nothing stops them, so that rows stop early, at different steps."""
    free = hf_greedy(hf, PROMPTS, max_new_tokens, eos_id=-1)
    eos = Counter(t for row in free for t in set(row[1:])).most_common(1)[0][0]
    return eos, hf_greedy(hf, PROMPTS, max_new_tokens, eos_id=eos)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi")
    hf = write_hf_phi(path, seed=4, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                      initializer_range=0.5)  # large weights: diverse greedy continuations
    model, tok = pmc_min.load(path)
    return hf, model


def test_greedy_is_token_identical_to_transformers_with_early_eos(tiny):
    hf, model = tiny
    eos, expected = early_eos_case(hf, 24)
    lengths = sorted(map(len, expected))
    assert lengths[0] < lengths[1] < 24 and len(set(lengths)) >= 3
    got = generate_ids(model, PROMPTS, max_new_tokens=24, eos_id=eos, pad_id=0)
    assert [g[0] for g in got] == expected
    # Cut into many small batches by the token budget: still identical.
    small = generate_ids(model, PROMPTS, max_new_tokens=24, eos_id=eos, pad_id=0, max_batch_tokens=40)
    assert [g[0] for g in small] == expected


def test_each_prompt_has_its_own_budget_of_new_tokens(tiny):
    """Per-prompt budgets, in one batch and cut into small ones, equal transformers' generate on
    each prompt alone with its own max_new_tokens; a long prompt shortens nobody else's answer."""
    hf, model = tiny
    eos, _ = early_eos_case(hf, 24)
    budgets = [30 - len(p) for p in PROMPTS]  # prompt + answer within 30 tokens, each on its own
    expected = [hf_greedy(hf, [p], b, eos_id=eos)[0] for p, b in zip(PROMPTS, budgets)]
    assert len({len(e) for e in expected}) >= 3
    for max_batch_tokens in (1 << 16, 40):
        got = generate_ids(model, PROMPTS, max_new_tokens=budgets, eos_id=eos, pad_id=0,
                           max_batch_tokens=max_batch_tokens)
        assert [g[0] for g in got] == expected
    sampled = generate_ids(model, PROMPTS, n=3, max_new_tokens=budgets, eos_id=-1, pad_id=0,
                           sampling=Sampling(1.0), seed=5)
    assert [[len(r) for r in rows] for rows in sampled] == [[b] * 3 for b in budgets]


@given(vocab=st.integers(1, 300), temperature=st.floats(0.1, 3.0), top_k=st.one_of(st.none(), st.integers(1, 400)),
       top_p=st.floats(0.01, 1.0), seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_filter_equals_transformers_warpers(vocab, temperature, top_k, top_p, seed, scale):
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    logits[0, : vocab // 2] = logits[0, 0]  # ties
    expected = logits.clone()
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    for w in warpers:
        expected = w(None, expected)
    got = filter_logits(logits, Sampling(temperature, top_p, top_k))
    assert torch.equal(got[1:], expected[1:])  # no ties: identical
    # Where equal logits straddle the top-p cut, HF keeps those its unstable sort happens
    # to put last, pmc_min those with the highest indices: as many of each value.
    assert torch.equal(got[0].sort().values, expected[0].sort().values)


def test_top_p_keeps_the_last_of_equal_logits():
    # Four equal tokens, p = 0.5: the two whose ascending cumulative probability is
    # <= 0.5 go; with equal logits ordered by index, those are the first two.
    got = filter_logits(torch.zeros(1, 4), Sampling(top_p=0.5))
    assert got.isfinite().tolist() == [[False, False, True, True]]
    # The same behind top-k, with ties of the k-th beyond the k listed.
    got = filter_logits(torch.tensor([[3.0, 0, 0, 0, 0, -1]]), Sampling(top_k=2, top_p=0.9))
    expected = TopPLogitsWarper(0.9)(None, TopKLogitsWarper(2)(None, torch.tensor([[3.0, 0, 0, 0, 0, -1]])))
    assert got.isfinite().sum() == expected.isfinite().sum() == 3 and got[0, 3:5].isfinite().all()


@given(vocab=st.integers(2, 300), temperature=st.floats(0.1, 3.0), top_k=st.integers(1, 299),
       top_p=st.floats(0.01, 1.0), seed=st.integers(0, 2**16), levels=st.sampled_from([None, 3, 12]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_draw_from_the_listed_tokens_picks_what_transformers_warpers_give(vocab, temperature, top_k, top_p, seed,
                                                                         levels, dtype):
    """The CPU draw on the k largest logits alone picks the token that inverting the CDF of the
    distribution filtered by HF's warpers picks, in vocabulary order, at the same uniform. With
    few distinct logit values (`levels`) ties straddle the top-p cut or the k-th logit: where
    they straddle the top-p cut, the filtered distribution is filter_logits' (whose tie rule
    HF's unstable sort leaves open, see above); ties of the k-th that run past the 2k listed give None.
    bfloat16 logits (a model sampled in bfloat16) are drawn from as their float32 values would be."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, vocab, generator=g) * 3
    if levels:
        logits = logits.round() * (10 / levels)  # at most 7 distinct values a row: many ties
    u = torch.rand(6, generator=g)
    k = min(top_k, vocab - 1)
    s = Sampling(temperature, top_p, k)
    got = draw_listed(logits.to(dtype), s, k, u)
    logits = logits.to(dtype).float()  # the same values
    scaled = logits / temperature
    m = min(2 * k, vocab)
    ties_past_the_list = m < vocab and (scaled.topk(m).values[:, k - 1] == scaled.topk(m).values[:, m - 1]).any()
    if ties_past_the_list:
        assert got is None
        return
    expected_probs = filter_logits(logits, s).softmax(-1)
    if not levels and dtype == torch.float32:  # no ties (bfloat16 values tie: see above)
        hf = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(k)(None, TemperatureLogitsWarper(temperature)(None, logits)))
        assert torch.equal(hf.isfinite(), expected_probs > 0)
    cdf = expected_probs.double().cumsum(-1)
    expected = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True).squeeze(-1)
    assert got.tolist() == expected.clamp(max=vocab - 1).tolist()


CHI2_999 = {4: 18.467, 9: 27.877}  # 0.999 quantiles of the chi-square distribution


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_draw_frequencies_match_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0]])
    probs = filter_logits(logits, Sampling(temperature=1.25, top_p=0.9)).softmax(-1)[0]  # 5 tokens survive
    kept = probs > 0
    assert int(kept.sum()) == 5
    u = torch.from_numpy(uniforms([0], 40_000, 1)[:, 0])
    tokens = draw(probs.expand(40_000, -1).contiguous(), u)
    counts = torch.bincount(tokens, minlength=8).double()
    assert counts[~kept].sum() == 0
    assert chi_square(counts[kept], probs[kept].double()) < CHI2_999[4]


def test_generated_first_tokens_follow_the_model_distribution(tiny):
    hf, model = tiny
    prompt = PROMPTS[0]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([prompt])).logits[:, -1]
    probs = filter_logits(logits, Sampling(temperature=1.3, top_k=10, top_p=1.0)).softmax(-1)[0].double()
    out = generate_ids(model, [prompt], n=3000, max_new_tokens=1, eos_id=-1, pad_id=0, sampling=Sampling(temperature=1.3, top_k=10),
                       seed=1)
    counts = torch.bincount(torch.tensor([o[0] for o in out[0]]), minlength=probs.numel()).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0
    assert chi_square(counts[kept], probs[kept]) < CHI2_999[9]


def test_seeded_sampling_is_deterministic(tiny):
    _, model = tiny
    kw = dict(n=3, max_new_tokens=12, eos_id=-1, pad_id=0, sampling=Sampling(1.25, 0.95, 50))
    a = generate_ids(model, PROMPTS, seed=7, **kw)
    assert a == generate_ids(model, PROMPTS, seed=7, **kw)
    assert a != generate_ids(model, PROMPTS, seed=8, **kw)
    assert all(len(per) == 3 for per in a)


def test_a_prompts_samples_do_not_depend_on_its_batch(tiny):
    # Per-prompt seeds: each prompt alone, in another order, or cut into other batches by a
    # smaller token budget draws the same samples (the padding changes the floats a
    # little, and with these settings no draw lands near a boundary).
    _, model = tiny
    kw = dict(n=3, max_new_tokens=12, eos_id=-1, pad_id=0, sampling=Sampling(1.25, 0.95, 50))
    seeds = [seed_of(5, i) for i in range(len(PROMPTS))]
    together = generate_ids(model, PROMPTS, seed=seeds, **kw)
    alone = [generate_ids(model, [p], seed=[s], **kw)[0] for p, s in zip(PROMPTS, seeds)]
    small = generate_ids(model, PROMPTS, seed=seeds, max_batch_tokens=60, **kw)
    reverse = generate_ids(model, PROMPTS[::-1], seed=seeds[::-1], **kw)[::-1]
    assert together == alone == small == reverse
    assert generate_ids(model, PROMPTS, seed=5, **kw) == together  # one seed: prompt i gets seed_of(seed, i)


@pytest.mark.parametrize("setting, message", [
    (dict(temperature=0.0), "temperature must be a positive number, not 0.0"),
    (dict(temperature=float("nan")), "temperature must be a positive number, not nan"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], not 1.5"),
    (dict(top_k=-3), r"top_k must not be negative \(0 or None: no top-k\), not -3"),
    (dict(n=0), "n must be at least 1, not 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must not be negative, not -1"),
])
def test_bad_sampling_settings_fail_in_one_sentence(tiny, setting, message):
    _, model = tiny
    with pytest.raises(ValueError, match=rf"^Bad sampling setting: {message}\.$"):
        sampling = Sampling(**{k: setting.pop(k) for k in ("temperature", "top_p", "top_k") if k in setting})
        generate_ids(model, PROMPTS, eos_id=0, pad_id=0, seed=0, sampling=sampling, **{"max_new_tokens": 4, **setting})


def test_generate_decodes_strings(tiny, tmp_path):
    _, model = tiny
    from helpers import byte_level_tokenizer
    from pmc_min.tokenizer import Tokenizer
    tok = Tokenizer(byte_level_tokenizer(), "<|endoftext|>")
    out = pmc_min.generate(model, tok, ["Question: Where?\n", "Hi"], n=2, max_new_tokens=5, seed=0,
                           sampling=Sampling(temperature=1.25, top_p=0.95))
    assert len(out) == 2 and all(len(o) == 2 and all(isinstance(s, str) for s in o) for o in out)


def test_n_samples_share_one_prefill_exactly(tiny):
    # top_k=1 makes sampling deterministic: each of the n rows built from one
    # shared prefill must then write transformers' greedy continuation.
    hf, model = tiny
    expected = hf_greedy(hf, PROMPTS, 16, eos_id=-1)
    got = generate_ids(model, PROMPTS, n=3, max_new_tokens=16, eos_id=-1, pad_id=0, sampling=Sampling(1.25, top_k=1),
                       seed=0, max_batch_tokens=120)
    assert got == [[e] * 3 for e in expected]


CUDA_GRAPHS = pytest.param("cuda-graphs", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="CUDA graphs need a CUDA GPU"))


def test_kept_cache_reaches_the_compiled_step_at_fixed_addresses(tiny):
    """A CUDA graph replays on the cache it was captured with only if the compiled step
    takes the kept cache tensors as fixed-address inputs (otherwise it copies them in
    on every replay, or gives up on graphs). Checked on the CPU with a backend that
    records how the decode step's inputs reach it."""
    from torch._dynamo.utils import get_static_address_type

    from pmc_min.sample import generate_batch

    _, model = tiny
    caches = []

    def backend(gm, example_inputs):
        caches.append([get_static_address_type(t) for t in example_inputs
                       if isinstance(t, torch.Tensor) and t.dim() == 4])  # the 4-d inputs: k and v caches
        return gm.forward

    step = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    generate_batch(model, PROMPTS, n=3, max_new_tokens=4, eos_id=-1, pad_id=0, decode=step, static=True)
    layers = model.config.num_hidden_layers
    assert caches and caches[0] == ["unguarded"] * (4 * layers)  # prompt k, v and generated k, v per layer
    model.kept_cache.clear()


@pytest.mark.parametrize("kv_heads", [4, 2])  # grouped-query attention: 2 query heads share a kv head
@pytest.mark.parametrize("mode", ["eager", "static", "compiled", "static-compiled", CUDA_GRAPHS])
def test_samples_sharing_a_prompt_decode_like_transformers(kv_heads, mode, tmp_path):
    """n rows per prompt read the prompt's cached keys once (SharedPrefixKV); every row of a
    greedy batch must still be token-identical to transformers, with rows stopping at eos at
    different steps: with the per-step key length, with static shapes, compiled (on a CPU,
    with the key length dynamic), compiled with static shapes and the kept cache (the graph
    a GPU captures, here without the CUDA graph), and compiled as a CUDA graph on a GPU."""
    from pmc_min.sample import compiled_decode, generate_batch

    hf = write_hf_phi(tmp_path, seed=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=kv_heads,
                      num_hidden_layers=2, initializer_range=0.5)
    device = "cuda" if mode == "cuda-graphs" else "cpu"
    model, _ = pmc_min.load(tmp_path, device=device)
    eos, expected = early_eos_case(hf, 20)
    assert len(set(map(len, expected))) >= 3
    decode = None if mode in ("eager", "static") else compiled_decode(model)
    if mode == "static-compiled":  # compiled_decode on a GPU, less mode="reduce-overhead"
        decode = torch.compile(model, fullgraph=True, dynamic=False)
    counters = torch._dynamo.utils.counters
    counters.clear()
    static = mode in ("static", "static-compiled", "cuda-graphs")
    got = generate_batch(model, PROMPTS, n=3, max_new_tokens=20, eos_id=eos, pad_id=0, decode=decode,
                         static=static)
    assert got == [row for row in expected for _ in range(3)]
    assert len(model.kept_cache) == (4 * 2 if static else 0)
    if static:  # static shapes keep their cache: the next call of these shapes reuses it
        kept = {k: t.data_ptr() for k, t in model.kept_cache.items()}
        assert generate_batch(model, PROMPTS, n=3, max_new_tokens=20, eos_id=eos, pad_id=0,
                              decode=decode, static=static) == got
        assert {k: t.data_ptr() for k, t in model.kept_cache.items()} == kept
    if mode == "compiled":  # on a CPU, other batch sizes and prompt lengths reuse the compiled step
        graphs = counters["stats"]["unique_graphs"]
        fewer = PROMPTS[:3]  # 3 prompts of at most 7 tokens, against 5 of at most 10
        got = generate_batch(model, fewer, n=3, max_new_tokens=20, eos_id=eos, pad_id=0, decode=decode)
        assert got == [row for row in hf_greedy(hf, fewer, 20, eos_id=eos) for _ in range(3)]
        assert counters["stats"]["unique_graphs"] == graphs > 0
    if mode == "cuda-graphs":  # batches of other shapes, each captured anew on its own cache
        assert counters["inductor"]["cudagraph_skips"] == 0  # the kept cache is written in place, not copied
        got = generate_ids(model, PROMPTS, max_new_tokens=20, eos_id=eos, pad_id=0, compile=True,
                           max_batch_tokens=60)
        assert [g[0] for g in got] == expected
