"""The paper's code path on a checkpoint with phi-1.5's exact widths, vocab
and rotary (random weights, 2 layers instead of 24 so AdamW fits in memory),
written by transformers in the hub layout with a GPT-2-style byte-level
tokenizer: one short PMC epoch on a few real TOFU questions."""

import json

import pytest

from helpers import TOFU, needs_tofu, run_py
from test_model import PHI_1_5_CONFIG


@pytest.mark.slow
@needs_tofu
def test_one_pmc_epoch_on_a_phi_1_5_sized_checkpoint(tmp_path):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PhiConfig, PhiForCausalLM

    cfg = {k: v for k, v in PHI_1_5_CONFIG.items() if not k.startswith("_") and k != "transformers_version"}
    torch.manual_seed(0)
    PhiForCausalLM(PhiConfig(**{**cfg, "num_hidden_layers": 2})).save_pretrained(tmp_path / "phi")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [json.loads(line)["question"] + " " + json.loads(line)["answer"]
             for line in (TOFU / "full.json").read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.save(str(tmp_path / "phi" / "tokenizer.json"))

    out = run_py("--model", str(tmp_path / "phi"), "--data-dir", str(TOFU), "--split", "forget01",
                 "--finetune-epochs", "0", "--epochs", "1", "--batch-size", "2", "--grad-accum", "1", "--n", "2",
                 "--max-length", "40", "--limit", "4", "--out", str(tmp_path / "out"), "--no-progress",
                 "--device", "cpu", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["curves"]["step"] == [1, 2] and len(results["curves"]["y0"]) == 4
    for when in ("before", "after"):
        assert set(results[when]["rouge_l_recall"]) == {"forget", "forget_paraphrased", "retain", "world_facts",
                                                        "real_authors"}
    reloaded = PhiForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert reloaded.config.hidden_size == 2048 and reloaded.config.vocab_size == 51200
