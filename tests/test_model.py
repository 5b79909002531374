"""Parity of the hand-written Phi with transformers' PhiForCausalLM."""

import json

import pytest
import torch
from safetensors.torch import save_file

import pmc_min
from pmc_min.checkpoint import config_from_hf
from pmc_min.model import Transformer
from helpers import LENGTHS, assert_parity, cached_logits, hf_llama, hf_phi, hf_positions, left_padded_batch, write_hf_phi

CONFIGS = {
    "base": {},
    "odd_head_dim": dict(hidden_size=45, num_attention_heads=3, partial_rotary_factor=0.4),  # head_dim 15, rot 6
    "rotary_0.75_qk_ln": dict(hidden_size=64, num_attention_heads=4, partial_rotary_factor=0.75, qk_layernorm=True),
    "full_rotary_gqa": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=1.0,
                            rope_theta=500.0, num_hidden_layers=3),
}


def ours_from(tmp_path, name, seed=0):
    hf = write_hf_phi(tmp_path, seed=seed, **CONFIGS[name])
    model, tok = pmc_min.load(tmp_path)
    return hf, model, tok


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_loss_and_gradients_match_transformers(tmp_path, name):
    hf, ours, _ = ours_from(tmp_path, name)
    assert_parity(hf, ours)


def test_left_padding_equals_unpadded_sequences(tmp_path):
    hf, ours, _ = ours_from(tmp_path, "base")
    ids, mask = left_padded_batch(LENGTHS, vocab=hf.config.vocab_size)
    padded = ours(ids, mask)
    for b, n in enumerate(LENGTHS):
        alone = hf(input_ids=ids[b:b + 1, -n:]).logits[0]
        assert (padded[b, -n:] - alone).abs().max().item() <= 1e-4


def test_kv_cache_decoding_matches_transformers(tmp_path):
    hf, ours, _ = ours_from(tmp_path, "full_rotary_gqa")
    ids, mask = left_padded_batch([9, 5, 9], vocab=hf.config.vocab_size)
    reference = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    cached = cached_logits(ours, ids, mask, prefill=6)
    real = mask.bool()
    assert (cached[real] - reference[real]).abs().max().item() <= 1e-4


def test_saved_checkpoint_loads_in_transformers_with_same_logits(tmp_path):
    from transformers import PhiForCausalLM

    _, ours, tok = ours_from(tmp_path / "hf", "odd_head_dim")
    with torch.no_grad():  # make it differ from what transformers wrote
        ours.lm_head.bias.add_(1.0)
    pmc_min.save(ours, tok, tmp_path / "ours")
    back = PhiForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask = left_padded_batch(LENGTHS, vocab=ours.config.vocab_size)
    expected = ours(ids, mask)
    got = back(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert (expected[mask.bool()] - got[mask.bool()]).abs().max().item() <= 1e-4
    reloaded, tok2 = pmc_min.load(tmp_path / "ours")
    assert torch.equal(reloaded(ids, mask), expected)
    assert tok2.encode("Answer: yes") == tok.encode("Answer: yes") and tok2.eos_id == tok.eos_id


def test_legacy_phi_msft_layout_gives_same_logits(tmp_path):
    hf = hf_phi(seed=3)
    c = hf.config
    legacy = {}
    for key, t in hf.state_dict().items():
        key = key.replace("model.embed_tokens.", "transformer.embd.wte.").replace("model.final_layernorm.", "lm_head.ln.")
        key = key.replace("model.layers.", "transformer.h.").replace(".input_layernorm.", ".ln.")
        key = key.replace(".self_attn.dense.", ".mixer.out_proj.")
        key = key.replace("lm_head.weight", "lm_head.linear.weight").replace("lm_head.bias", "lm_head.linear.bias")
        legacy[key] = t.contiguous()
    for i in range(c.num_hidden_layers):
        for part in ("weight", "bias"):
            qkv = [legacy.pop(f"transformer.h.{i}.self_attn.{n}_proj.{part}") for n in "qkv"]
            legacy[f"transformer.h.{i}.mixer.Wqkv.{part}"] = torch.cat(qkv, dim=0)
    save_file(legacy, str(tmp_path / "model.safetensors"))
    head_dim = c.hidden_size // c.num_attention_heads
    (tmp_path / "config.json").write_text(json.dumps(dict(
        model_type="phi-msft", vocab_size=c.vocab_size, n_embd=c.hidden_size, n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads, n_inner=c.intermediate_size, n_positions=c.max_position_embeddings,
        rotary_dim=int(head_dim * 0.5), layer_norm_epsilon=c.layer_norm_eps, activation_function="gelu_new")))
    from helpers import byte_level_tokenizer
    byte_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    ours, _ = pmc_min.load(tmp_path)
    ids, mask = left_padded_batch(LENGTHS, vocab=c.vocab_size)
    expected = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert (ours(ids, mask)[mask.bool()] - expected[mask.bool()]).abs().max().item() <= 1e-4


def test_sharded_checkpoint_loads(tmp_path):
    hf = hf_phi(seed=1)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    from helpers import byte_level_tokenizer
    byte_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    ours, _ = pmc_min.load(tmp_path)
    ids, mask = left_padded_batch(LENGTHS, vocab=hf.config.vocab_size)
    expected = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert (ours(ids, mask)[mask.bool()] - expected[mask.bool()]).abs().max().item() <= 1e-4


PHI_1_5_CONFIG = {  # the fields of microsoft/phi-1_5's config.json (transformers-4 layout)
    "_name_or_path": "microsoft/phi-1_5", "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": None, "embd_pdrop": 0.0, "eos_token_id": None, "hidden_act": "gelu_new", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "phi", "num_attention_heads": 32, "num_hidden_layers": 24, "num_key_value_heads": None,
    "partial_rotary_factor": 0.5, "qk_layernorm": False, "resid_pdrop": 0.0, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.37.0",
    "vocab_size": 51200,
}


def test_phi_1_5_config_builds_the_right_shapes():
    cfg = config_from_hf(PHI_1_5_CONFIG)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_parameters() == 1_418_270_720
    assert cfg.rotary_dim == 32 and cfg.eos_token_id is None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["embed_tokens.weight"] == (51200, 2048)
    assert shapes["layers.23.self_attn.q_proj.weight"] == (2048, 2048)
    assert shapes["layers.0.mlp.fc1.weight"] == (8192, 2048)
    assert shapes["lm_head.bias"] == (51200,)
    assert len(model.layers) == 24


def test_transformers_5_layout_is_read():
    from transformers import PhiConfig

    hf = PhiConfig(**{k: v for k, v in PHI_1_5_CONFIG.items() if not k.startswith("_")} | {"partial_rotary_factor": 0.4,
                                                                                           "rope_theta": 300.0})
    d = hf.to_dict()
    assert "rope_parameters" in d
    d.pop("partial_rotary_factor", None), d.pop("rope_theta", None)
    cfg = config_from_hf(d)
    assert cfg.partial_rotary_factor == 0.4 and cfg.rope_theta == 300.0


def test_bfloat16_load(tmp_path):
    write_hf_phi(tmp_path)
    model, _ = pmc_min.load(tmp_path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    ids, mask = left_padded_batch(LENGTHS, vocab=320)
    assert torch.isfinite(model(ids, mask).float()).all()


# Errors a user can cause: one clear sentence.

def test_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(pmc_min.UserError, match=r"not found: no folder at .*Hugging Face cache.*download"):
        pmc_min.load("someone/not-a-model")
    with pytest.raises(pmc_min.UserError, match="Unknown model 'phi 9'"):
        pmc_min.load("phi 9")


@pytest.mark.parametrize("override, message", [
    ({"intermediate_size": 100}, r"'layers.0.mlp.fc1.weight' has shape \(96, 48\).*implies \(100, 48\)"),  # wrong shape
    ({"num_hidden_layers": 3}, r"missing tensor 'layers.2.input_layernorm.weight'"),  # missing key
    ({"model_type": "gpt_neox"}, r"model_type 'gpt_neox' is not supported; supported: phi"),
])
def test_config_that_does_not_fit_the_weights_is_named(override, message, tmp_path):
    write_hf_phi(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | override))
    with pytest.raises(pmc_min.UserError, match=message):
        pmc_min.load(tmp_path)


@pytest.mark.parametrize("setting, message", [
    (dict(dtype="float8"), "dtype must be one of float32, bfloat16, float16, float64, not float8"),
    (dict(dtype=torch.int8), "dtype must be one of float32, bfloat16, float16, float64, not torch.int8"),
    (dict(device="tpu"), "'tpu' is not a device torch knows; use cpu or cuda"),
])
def test_bad_dtype_or_device_is_named(setting, message, tmp_path):
    write_hf_phi(tmp_path)
    with pytest.raises(pmc_min.UserError, match=rf"^{message}\.$"):
        pmc_min.load(tmp_path, **setting)
    model, _ = pmc_min.load(tmp_path, dtype="bfloat16")  # a dtype's name will do
    assert model.dtype == torch.bfloat16


def test_corrupt_safetensors_is_named(tmp_path):
    write_hf_phi(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(pmc_min.UserError, match=r"model.safetensors is not a readable safetensors file"):
        pmc_min.load(tmp_path)


# Llama: RMSNorm, grouped-query attention, SwiGLU, llama3 rope scaling, tied embeddings.

LLAMA_CONFIGS = {
    "gqa_llama3_tied": {},
    "mha_untied_no_scaling": dict(num_key_value_heads=8, tie_word_embeddings=False, rope_scaling=None,
                                  rope_theta=10000.0),
}


@pytest.mark.parametrize("name", LLAMA_CONFIGS)
def test_llama_logits_loss_gradients_and_greedy_match_transformers(tmp_path, name):
    from helpers import byte_level_tokenizer
    from pmc_min.sample import generate_ids

    hf = hf_llama(**LLAMA_CONFIGS[name])
    hf.save_pretrained(tmp_path)
    byte_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    ours, tok = pmc_min.load(tmp_path)
    assert ours.config.model_type == "llama"
    logits = assert_parity(hf, ours)

    prompts = [[5, 17, 42, 9, 77], [8, 2], [33, 44, 55, 66, 12, 90, 3]]
    P = max(map(len, prompts))
    hf_ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    hf_out = hf.generate(input_ids=hf_ids, attention_mask=(hf_ids != 0).long(), do_sample=False, max_new_tokens=12,
                         eos_token_id=None, pad_token_id=0, top_k=None, top_p=None, temperature=None)
    ours_out = generate_ids(ours, prompts, max_new_tokens=12, eos_id=-1, pad_id=0)
    assert [o[0] for o in ours_out] == hf_out[:, P:].tolist()

    pmc_min.save(ours, tok, tmp_path / "saved")  # round trip through transformers
    from transformers import LlamaForCausalLM
    back = LlamaForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids, mask = left_padded_batch(LENGTHS, vocab=320)
    again = back(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert (again[mask.bool()] - logits[mask.bool()]).abs().max().item() <= 1e-4
