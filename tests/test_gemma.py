"""Gemma 3 by hand (pmc_min/gemma.py) against transformers' Gemma3ForCausalLM: logits, loss and
gradients on a left-padded batch, cached decoding and greedy generation past the sliding window,
a round trip through transformers, and config.json in the hub's and in transformers-5's layout."""

import json

import pytest
import torch

import pmc_min
from pmc_min.checkpoint import config_from_hf
from pmc_min.sample import Sampling, generate_ids
from helpers import LENGTHS, assert_parity, byte_level_tokenizer, cached_logits, hf_positions, left_padded_batch

ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}
CONFIGS = {  # windows of 3-4 tokens, so that most rows of LENGTHS cross them
    "gqa_scaled_rope_tied": dict(num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=4,
                                 num_hidden_layers=7, rope_parameters=ROPE),
    "mha_softcap_untied": dict(num_key_value_heads=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=3,
                               num_hidden_layers=3, final_logit_softcapping=3.0, tie_word_embeddings=False,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}


def hf_gemma(seed=0, **overrides):
    """A random transformers Gemma3ForCausalLM (fp32, eval mode), its norms randomised (HF starts them at 0)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_attention_heads=4, max_position_embeddings=256,
               rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0, attn_implementation="eager")
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(params=CONFIGS)
def pair(request, tmp_path):
    hf = hf_gemma(**CONFIGS[request.param])
    hf.save_pretrained(tmp_path)
    byte_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    ours, tok = pmc_min.load(tmp_path)
    assert type(ours).__name__ == "Gemma3" and ours.config.layer_types == hf.config.layer_types
    return hf, ours, tok, tmp_path


def test_logits_loss_and_gradients_match_transformers(pair):
    hf, ours, _, _ = pair
    assert max(LENGTHS) > ours.config.sliding_window
    assert_parity(hf, ours)


def test_cached_decoding_past_the_window_matches_transformers(pair):
    hf, ours, _, _ = pair
    ids, mask = left_padded_batch([11, 6, 11], vocab=320)
    reference = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    cached = cached_logits(ours, ids, mask, prefill=5)
    assert (cached[mask.bool()] - reference[mask.bool()]).abs().max().item() <= 1e-4


def test_greedy_generation_past_the_window_equals_transformers_generate(pair):
    hf, ours, _, _ = pair
    prompts = [[5, 17, 42, 9, 77], [8, 2], [33, 44, 55, 66, 12, 90, 3]]
    P = max(map(len, prompts))
    hf_ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    hf_out = hf.generate(input_ids=hf_ids, attention_mask=(hf_ids != 0).long(), do_sample=False, max_new_tokens=12,
                         eos_token_id=None, pad_token_id=0, top_k=None, top_p=None, temperature=None)
    expected = hf_out[:, P:].tolist()
    assert [o[0] for o in generate_ids(ours, prompts, max_new_tokens=12, eos_id=-1, pad_id=0)] == expected
    # n samples from one shared prefill (the sampler's SharedPrefixKV); top-k 1 makes each the greedy answer
    sampled = generate_ids(ours, prompts, n=3, max_new_tokens=12, eos_id=-1, pad_id=0,
                           sampling=Sampling(1.25, top_k=1), seed=0)
    assert sampled == [[e] * 3 for e in expected]


def test_saved_model_loads_in_transformers_with_the_same_logits(pair):
    from transformers import Gemma3ForCausalLM

    _, ours, tok, folder = pair
    with torch.no_grad():  # make it differ from what transformers wrote
        ours.final_layernorm.weight.add_(0.5)
    pmc_min.save(ours, tok, folder / "ours")
    back = Gemma3ForCausalLM.from_pretrained(folder / "ours", attn_implementation="eager").eval()
    ids, mask = left_padded_batch(LENGTHS, vocab=320)
    expected = ours(ids, mask)
    got = back(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert (expected[mask.bool()] - got[mask.bool()]).abs().max().item() <= 1e-4
    assert torch.equal(pmc_min.load(folder / "ours")[0](ids, mask), expected)


HUB_CONFIG = {  # the layout google/gemma-3-270m's config.json has (transformers-4 keys)
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
    "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    "rope_scaling": None, "sliding_window": 512, "_sliding_window_pattern": 6, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    "tie_word_embeddings": True}


@pytest.mark.parametrize("changes", [{}, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}])
def test_the_hubs_config_layout_is_read_as_transformers_reads_it(changes):
    from transformers import Gemma3TextConfig

    raw = {**HUB_CONFIG, **changes}
    theirs, ours = Gemma3TextConfig(**raw), config_from_hf(raw)
    assert ours.layer_types == theirs.layer_types and ours.layer_types.count("full_attention") == 3
    assert ours.rope_theta == theirs.rope_parameters["full_attention"]["rope_theta"]
    assert ours.rope_local_base_freq == theirs.rope_parameters["sliding_attention"]["rope_theta"]
    assert (ours.rope_scaling or {}).get("factor", 1.0) == theirs.rope_parameters["full_attention"].get("factor", 1.0)
    assert (ours.head_dim, ours.num_key_value_heads, ours.sliding_window) == (256, 1, 512)
    multimodal = config_from_hf({"model_type": "gemma3", "text_config": raw, "vision_config": {}})
    assert multimodal == ours
    assert config_from_hf(json.loads(json.dumps(theirs.to_dict()))) == ours  # transformers-5's own layout


def test_a_sparse_multimodal_config_takes_transformers_defaults():
    from transformers import Gemma3Config

    raw = {"model_type": "gemma3", "eos_token_id": [1, 106], "text_config": {  # as google/gemma-3-4b-it states it
        "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}
    theirs, ours = Gemma3Config(**raw).text_config, config_from_hf(raw)
    for key in ("vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim", "query_pre_attn_scalar",
                "sliding_window", "max_position_embeddings", "layer_types", "hidden_size", "num_hidden_layers"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.rope_scaling["factor"] == theirs.rope_parameters["full_attention"]["factor"] == 8.0
    assert ours.rope_local_base_freq == theirs.rope_parameters["sliding_attention"]["rope_theta"]
    assert ours.eos_token_id == 1


def test_an_encoder_or_gemma_2s_attention_cap_is_refused():
    with pytest.raises(pmc_min.UserError, match="use_bidirectional_attention"):
        config_from_hf({**HUB_CONFIG, "use_bidirectional_attention": True})
    with pytest.raises(pmc_min.UserError, match="attn_logit_softcapping"):
        config_from_hf({**HUB_CONFIG, "attn_logit_softcapping": 50.0})
