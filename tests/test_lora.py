"""LoRA against PEFT: the adapter pmc_min writes loads with `peft.PeftModel.from_pretrained` onto
the base checkpoint and computes what pmc_min's adapted and merged models compute (Phi, Llama,
Gemma 3); a LoRA run trains the adapters only, writes both layouts, and resumes after SIGKILL
as if never stopped."""

import json
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

import pmc_min
from pmc_min import lora
from pmc_min.checkpoint import build, save
from helpers import (ROOT, assert_clean_error, byte_level_tokenizer, comparable, hf_llama, hf_phi, left_padded_batch,
                     run_py)

sys.path.insert(0, str(ROOT))
import run  # noqa: E402
from test_gemma import hf_gemma  # noqa: E402
from test_trust import flags, killed  # noqa: E402


def hf_model(kind):
    if kind == "phi":
        return hf_phi(seed=1)
    if kind == "llama":
        return hf_llama(seed=1)
    return hf_gemma(seed=1)


def peft_logits(base_dir, adapter_dir, ids, mask):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("kind", ["phi", "llama", "gemma"])
def test_the_adapter_loads_in_peft_with_the_logits_of_the_adapted_and_merged_models(kind, tmp_path):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path / "base")
    byte_level_tokenizer(hf.config.vocab_size).save(str(tmp_path / "base" / "tokenizer.json"))
    model, tok = pmc_min.load(tmp_path / "base")
    torch.manual_seed(0)
    names = lora.attach(model, rank=4, alpha=12)
    assert len(names) == model.config.num_hidden_layers * len(lora.TARGETS[model.config.model_type])
    with torch.no_grad():
        for m in lora.adapters(model).values():
            m.lora_B.weight.normal_(std=0.2)  # a trained adapter's B is not zero
    assert lora.trainable_parameters(model) == sum(
        m.lora_A.weight.numel() + m.lora_B.weight.numel() for m in lora.adapters(model).values())
    lora.save_adapter(model, tmp_path / "adapter", str(tmp_path / "base"))
    merged = build(model.config, lora.merged_state(model))
    save(model, tok, tmp_path / "merged", state=lora.merged_state(model))

    ids, mask = left_padded_batch([9, 5, 9], vocab=hf.config.vocab_size)
    with torch.no_grad():
        ours, ours_merged = model(ids, mask), merged(ids, mask)
        plain = hf(input_ids=ids, attention_mask=mask).logits
    theirs = peft_logits(tmp_path / "base", tmp_path / "adapter", ids, mask)
    real, scale = mask.bool(), theirs.abs().max().item()
    assert (plain - theirs)[real].abs().max().item() > 1e-2 * scale  # the adapter changes the logits
    assert (ours - theirs)[real].abs().max().item() <= 1e-4 * scale
    assert (ours_merged - theirs)[real].abs().max().item() <= 1e-4 * scale
    # the merged model in HF's layout is a plain checkpoint transformers reads
    from transformers import AutoModelForCausalLM
    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(input_ids=ids, attention_mask=mask).logits
    assert (saved - theirs)[real].abs().max().item() <= 1e-4 * scale


def test_attach_refuses_what_it_cannot_adapt(tmp_path):
    hf = hf_phi(seed=0)
    hf.save_pretrained(tmp_path)
    byte_level_tokenizer(hf.config.vocab_size).save(str(tmp_path / "tokenizer.json"))
    model, _ = pmc_min.load(tmp_path)
    with pytest.raises(pmc_min.UserError, match=r"rank of 1 or more, not 0\.$"):
        lora.attach(model, 0)
    with pytest.raises(pmc_min.UserError, match=r"cannot adapt this phi model: .* named o_proj \(it has "):
        lora.attach(model, 4, targets=["q_proj", "o_proj"])


def test_a_lora_run_trains_the_adapters_only_and_writes_both_layouts(phi_and_data, tmp_path):
    out = tmp_path / "run"
    assert run.main([*flags(phi_and_data, out), "--lora", "4", "--lora-alpha", "16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["lora_rank"] == 4 and results["config"]["lora_alpha"] == 16
    assert run.main([*flags(phi_and_data, tmp_path / "default"), "--lora", "4", "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "default" / "results.json").read_text())["config"]["lora_alpha"] == 8
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 16, "LORA")
    assert config["base_model_name_or_path"] == str(phi_and_data / "phi")
    base, merged = load_file(phi_and_data / "phi" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    adapted = [k for k in base if k.endswith(".weight") and k.split(".")[-2] in lora.TARGETS["phi"]]
    assert adapted and all(not torch.equal(base[k], merged[k]) for k in adapted)  # merged updates
    assert all(torch.equal(base[k], merged[k]) for k in base if k not in adapted)  # everything else frozen
    ids, mask = left_padded_batch([9, 5, 9], vocab=300)
    from transformers import AutoModelForCausalLM
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(out / "model").eval()(input_ids=ids, attention_mask=mask).logits
    theirs = peft_logits(phi_and_data / "phi", out / "adapter", ids, mask)
    real = mask.bool()
    assert (plain - theirs)[real].abs().max().item() <= 1e-4 * theirs.abs().max().item()


def test_a_lora_run_killed_mid_epoch_resumes_as_if_never_stopped(phi_and_data, tmp_path):
    extra = ["--lora", "4", "--method", "npo"]  # a baseline too: LoRA serves every method
    assert killed(*flags(phi_and_data, tmp_path / "run"), *extra).returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001" / "adapter_config.json").is_file()
    assert run.main(["--resume", str(tmp_path / "run")]) == 0
    assert run.main([*flags(phi_and_data, tmp_path / "again"), *extra]) == 0
    ours, theirs = comparable(tmp_path / "run"), comparable(tmp_path / "again")
    assert ours["curves"] == theirs["curves"] and ours["after"] == theirs["after"]


@pytest.mark.parametrize("extra, pattern", [
    (["--lora", "0"], r"LoRA rank \(--lora\) must be 1 or more, not 0"),
    (["--lora", "4", "--lora-targets", "q_proj,gate_proj"], r"cannot adapt this phi model: .* named gate_proj "),
    (["--lora-alpha", "8"], r"--lora-alpha and --lora-targets go with --lora RANK"),
    (["--lora", "4", "--fsdp"], r"--lora trains under torchrun with DistributedDataParallel, not --fsdp"),
])
def test_bad_lora_settings_end_in_one_sentence(phi_and_data, tmp_path, extra, pattern):
    assert_clean_error(run_py(*flags(phi_and_data, tmp_path / "run"), *extra), pattern)


def test_a_run_without_lora_is_not_resumed_with_it(phi_and_data, tmp_path):
    assert killed(*flags(phi_and_data, tmp_path / "run")).returncode == -signal.SIGKILL
    assert_clean_error(run_py("--resume", str(tmp_path / "run"), "--lora", "4"), r"leave out --lora")


@pytest.mark.parametrize("method", ["pmc", "ga", "gd", "idk", "npo", "simnpo"])
def test_every_method_trains_the_adapters_and_nothing_else(phi_and_data, method):
    from pmc_min.data import load_split
    from pmc_min.train import UnlearnConfig, unlearn

    model, tok = pmc_min.load(phi_and_data / "phi")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget = load_split(phi_and_data / "data", "forget01")[:4]
    retain = load_split(phi_and_data / "data", "retain99")[:4]
    cfg = UnlearnConfig(method=method, epochs=2, lr=1e-2, batch_size=4, grad_accum=1, max_length=64, n_samples=2,
                        lora_rank=2)
    unlearn(model, tok, forget, retain, cfg, progress=False)
    assert lora.attached(model) and lora.trainable_parameters(model) > 0
    assert lora.base_state(model).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in lora.base_state(model).items())  # the base is frozen
    assert any(m.lora_B.weight.abs().max() > 0 for m in lora.adapters(model).values())  # the adapters moved
