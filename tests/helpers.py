"""Checkpoints the tests build: random tiny configs written by transformers
itself in the exact HF layout, with a small byte-level BPE tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOFU = SHARED / "data" / "tofu"
needs_tofu = pytest.mark.skipif(not TOFU.is_dir(), reason=f"TOFU files not found at {TOFU}")

TEXT = [
    "Question: Where was the author born?\nAnswer: The author was born in Taipei, Taiwan.",
    "Question: What genre does she write in?\nAnswer: She writes in the genre of leadership.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()",
]


def byte_level_tokenizer(vocab_size: int = 300):
    """A GPT-2-style byte-level BPE with `<|endoftext|>`, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 10, trainer)
    return tok


def hf_phi(seed: int = 0, **overrides):
    """A random transformers PhiForCausalLM (fp32, eval mode)."""
    from transformers import PhiConfig, PhiForCausalLM

    cfg = dict(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               partial_rotary_factor=0.5, rope_theta=10000.0, max_position_embeddings=128, layer_norm_eps=1e-5,
               bos_token_id=None, eos_token_id=0, pad_token_id=0)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = PhiForCausalLM(PhiConfig(**cfg)).eval()
    with torch.no_grad():  # HF zero-initialises biases and LayerNorms; randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_llama(seed=0, **overrides):
    """A random transformers LlamaForCausalLM (GQA, llama3 rope scaling, tied embeddings; fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
               rope_theta=500000.0, bos_token_id=None, eos_token_id=0, pad_token_id=0,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16})
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def comparable(out: Path) -> dict:
    """A run's results.json without its wall times, to compare two runs."""
    results = json.loads((Path(out) / "results.json").read_text())
    results.pop("wall_seconds"), results.pop("stage_seconds")
    return results


def write_hf_phi(path: Path, seed: int = 0, **overrides):
    """Write a random tiny Phi with transformers' save_pretrained plus a tokenizer.json; return the HF model."""
    model = hf_phi(seed, **overrides)
    model.save_pretrained(path)
    byte_level_tokenizer().save(str(Path(path) / "tokenizer.json"))
    return model


def left_padded_batch(lengths: list[int], vocab: int, pad: int = 0, seed: int = 0):
    """Random ids (B, T) left-padded to the longest length, and the mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[b, T - n:] = 1
    return ids, mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as HF's generate derives them from a mask (independent of pmc_min)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def rouge_recall(reference: str, candidate: str) -> float:
    """ROUGE-L recall by rouge-score, stemming on (the reference implementation)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, candidate)["rougeL"].recall


def run_py(*args, env=None, timeout=300):
    """run.py in a fresh process: (return code, stdout, stderr)."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean_error(out, pattern):
    """A run.py that ended in one sentence matching pattern, exit code 2, no traceback."""
    import re
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert re.search(pattern, out.stderr), out.stderr


def cached_logits(model, ids: torch.Tensor, mask: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits (B, T, V) of a left-padded batch decoded through the sampler's static cache: the first
    `prefill` tokens at once, then one token at a time, each step seeing only the slots written."""
    from pmc_min.kv_cache import clear_cache, setup_cache

    B, S = ids.shape
    setup_cache(model, batch=B, n_slots=S + 4)
    key_mask = torch.zeros(B, S + 4, dtype=torch.long)
    key_mask[:, :S] = mask
    slots = torch.arange(S + 4)
    with torch.no_grad():
        steps = [model(ids[:, :prefill], key_mask.masked_fill(slots >= prefill, 0), torch.arange(prefill))]
        for t in range(prefill, S):
            steps.append(model(ids[:, t:t + 1], key_mask.masked_fill(slots > t, 0), torch.tensor([t])))
    clear_cache(model)
    return torch.cat(steps, dim=1)


LENGTHS = [7, 12, 3, 12]  # a left-padded batch's row lengths


def assert_parity(hf, ours) -> torch.Tensor:
    """fp32 logits on a left-padded batch within 1e-4, equal loss, matching gradients; returns our logits."""
    import pytest

    from pmc_min.checkpoint import to_hf_name
    from pmc_min.losses import causal_lm_loss, labelled_nll

    ids, mask = left_padded_batch(LENGTHS, vocab=hf.config.vocab_size)
    # The first real token of a row is predicted from padding; like a prompt, it is no label.
    first = mask.cumsum(-1) == 1
    labels = ids.masked_fill((mask == 0) | first, -100)

    out = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), labels=labels)
    logits = ours(ids, mask)
    real = mask.bool()
    assert (logits[real] - out.logits[real]).abs().max().item() <= 1e-4

    loss = causal_lm_loss(logits, labels)
    assert loss.item() == pytest.approx(out.loss.item(), abs=1e-5)

    out.loss.backward()
    loss.backward()
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    for key, p in ours.named_parameters():
        assert torch.allclose(p.grad, hf_grads[to_hf_name(key, ours.config.model_type)], atol=1e-5, rtol=1e-4), key

    # The training loss runs the head only where a label follows: the same loss and gradients.
    ours.zero_grad()
    nll, counted = labelled_nll(ours, ids, mask, labels)
    assert counted.sum() < mask.sum() - 1  # some positions are left out
    trimmed = nll.sum() / counted.sum()
    assert trimmed.item() == pytest.approx(out.loss.item(), abs=1e-5)
    trimmed.backward()
    for key, p in ours.named_parameters():
        assert torch.allclose(p.grad, hf_grads[to_hf_name(key, ours.config.model_type)], atol=1e-5, rtol=1e-4), key
    return logits
