"""The authors' protocol, checked against their own formulas and against transformers:
run length and schedule, no clipping by default, SimNPO, the prefilling attack's
placement, the Llama-3.2 chat template, and presets chosen from the checkpoint."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pmc_min
from pmc_min import attacks, baselines, qa
from pmc_min.qa import encode_qa, prompt
from pmc_min.sample import Sampling
from pmc_min.tokenizer import Tokenizer, chat_format
from pmc_min.engine import Share
from pmc_min.train import RunLength, UnlearnConfig, unlearn
from helpers import byte_level_tokenizer, write_hf_phi

LLAMA_32_TEMPLATE = (Path(__file__).parent / "data" / "llama-3.2-3b-instruct.jinja").read_text()


def authors_run_length(n, batch, accum, epochs):
    """unlearning/unlearning.py: TrainingArguments(max_steps=..., warmup_steps=max(1, steps_per_epoch))."""
    steps_per_epoch = n // (batch * accum)
    return int(epochs * n) // (batch * accum), max(1, steps_per_epoch)


@pytest.mark.parametrize("n, batch, accum, epochs, per_epoch, last_epoch", [
    (400, 16, 4, 40, 7, 36),  # Phi on forget10: 250 steps of 7 an epoch, stopping in epoch 36
    (400, 8, 2, 30, 25, 30),  # Llama-3.2-3B-Instruct on forget10: 750 steps
    (100, 20, 1, 40, 5, 40),  # the tiny default: 40 full epochs, as before
    (100, 16, 4, 3, 2, 2),  # floor(3 * 100 / 64) = 4 steps
])
def test_run_length_is_the_authors(n, batch, accum, epochs, per_epoch, last_epoch):
    length = RunLength.of(n, batch, accum, epochs)
    assert (length.max_steps, length.warmup) == authors_run_length(n, batch, accum, epochs)
    assert (length.steps_per_epoch, length.epochs) == (per_epoch, last_epoch)


def test_a_run_too_short_for_one_step_says_so(tmp_path):
    write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    forget, retain = tiny_rows(4)
    with pytest.raises(pmc_min.UserError, match=r"1 epoch\(s\) of 4 forget questions in batches of 4 x 2 make no "
                                                r"optimizer step"):
        unlearn(model, tok, forget, retain, UnlearnConfig(method="ga", epochs=1, batch_size=4, grad_accum=2),
                progress=False)


def tiny_rows(n):
    forget = [{"question": f"Where was author {i} born?", "answer": f"In city {i}."} for i in range(n)]
    retain = [{"question": f"What did author {i} write?", "answer": f"Book {i}."} for i in range(n)]
    return forget, retain


def test_a_run_makes_the_authors_steps_on_hfs_linear_schedule(tmp_path):
    from transformers import get_linear_schedule_with_warmup

    write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    forget, retain = tiny_rows(100)
    ends = []
    cfg = UnlearnConfig(method="ga", epochs=3, batch_size=16, grad_accum=4, lr=1e-3, max_length=32)
    curves = unlearn(model, tok, forget, retain, cfg, progress=False, on_epoch_end=lambda st, engine: ends.append(
        (st.epoch, st.step, st.final)))
    assert curves["step"] == [1, 2, 3, 4] and curves["epoch"] == [1, 1, 2, 2]
    assert ends == [(1, 2, False), (2, 4, True)]
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=4)
    expected = []
    for _ in range(4):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert curves["lr"] == pytest.approx(expected)


def deepspeed_updates(n, batch, accum, epochs) -> list[int]:
    """The micro-batches after which the authors' pinned setup updated: HF's Trainer walks its
    micro-batches epoch by epoch until its step counter (a step every accum micro-batches and at an
    epoch's end) reaches max_steps; DeepSpeed 0.13.1's engine updates when its own micro-step counter,
    never reset, reaches a multiple of accum (`is_gradient_accumulation_boundary`)."""
    max_steps, micro_per_epoch = epochs * n // (batch * accum), -(-n // batch)
    trainer_steps, micro_steps, updates = 0, 0, []
    while trainer_steps < max_steps:
        for i in range(micro_per_epoch):
            if trainer_steps == max_steps:
                break
            if (micro_steps + 1) % accum == 0:
                updates.append(micro_steps + 1)
            micro_steps += 1
            trainer_steps += (i + 1) % accum == 0 or i + 1 == micro_per_epoch
    return updates


def test_phi_on_forget10_made_223_updates_under_the_authors_deepspeed():
    assert len(deepspeed_updates(400, 16, 4, 40)) == 223
    assert RunLength.of(400, 16, 4, 40).max_steps == 250


def test_update_count_deepspeed_updates_where_deepspeed_did(tmp_path, monkeypatch):
    from transformers import get_linear_schedule_with_warmup

    write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    forget, retain = tiny_rows(100)
    from pmc_min.engine import Engine

    lrs, real_step = [], Engine.step
    monkeypatch.setattr(Engine, "step", lambda engine: lrs.append(engine.lr) or real_step(engine))
    cfg = UnlearnConfig(method="ga", epochs=3, batch_size=16, grad_accum=4, lr=1e-3, max_length=32,
                        update_count="deepspeed")
    curves = unlearn(model, tok, forget, retain, cfg, progress=False)
    assert curves["step"] == [1, 2, 3, 4]  # the Trainer's steps: it stops where the Trainer stops
    assert deepspeed_updates(100, 16, 4, 3) == [4, 8, 12]  # of the 14 micro-batches before it stops
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=4)
    expected = []
    for _ in range(3):  # DeepSpeed steps the Trainer's schedule once per update
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(expected)


def test_gradients_carried_over_an_epochs_end_survive_a_resume(tmp_path):
    from pmc_min.resume import load_state, save_state

    write_hf_phi(tmp_path / "phi")
    forget, retain = tiny_rows(10)
    cfg = UnlearnConfig(method="ga", epochs=3, batch_size=4, grad_accum=2, lr=1e-3, max_length=32,
                        update_count="deepspeed")
    model, tok = pmc_min.load(tmp_path / "phi")
    pending = []

    def checkpoint(state, engine):
        pending.append(state.pending is not None)
        if state.epoch == 1:
            save_state(tmp_path / "run", model, tok, state, engine)

    unlearn(model, tok, forget, retain, cfg, progress=False, on_epoch_end=checkpoint)
    assert pending[0]  # epoch 1: 3 micro-batches, an update after the 2nd only
    resumed, tok, state = load_state(tmp_path / "run" / "checkpoints" / "epoch-0001")
    unlearn(resumed, tok, forget, retain, cfg, progress=False, resume=state)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_gradients_are_clipped_only_when_asked(tmp_path, monkeypatch):
    write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    forget, retain = tiny_rows(8)
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, norm: calls.append(norm))
    unlearn(model, tok, forget, retain, UnlearnConfig(method="gd", epochs=1, batch_size=4, grad_accum=1, lr=1e-4,
                                                      max_length=32), progress=False)
    assert calls == []  # the authors' default: no clipping
    unlearn(model, tok, forget, retain, UnlearnConfig(method="gd", epochs=1, batch_size=4, grad_accum=1, lr=1e-4,
                                                      max_length=32, max_grad_norm=0.5), progress=False)
    assert calls == [0.5, 0.5]


@pytest.mark.parametrize("architecture", ["phi", "llama"])
def test_weight_decay_spares_what_hfs_trainer_spares(tmp_path, architecture):
    """transformers' Trainer.get_decay_parameter_names on the same model: decay on weights and
    embeddings, none on biases and norm weights."""
    from transformers import Trainer

    from helpers import byte_level_tokenizer, hf_llama
    from pmc_min.checkpoint import to_hf_name
    from pmc_min.engine import decay_groups

    hf = write_hf_phi(tmp_path, qk_layernorm=True) if architecture == "phi" else hf_llama(tie_word_embeddings=False)
    if architecture == "llama":
        hf.save_pretrained(tmp_path)
        byte_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    model, _ = pmc_min.load(tmp_path)
    decayed, spared = decay_groups(model, 0.01)
    assert (decayed["weight_decay"], spared["weight_decay"]) == (0.01, 0.0)
    names = {id(p): to_hf_name(n, model.config.model_type) for n, p in model.named_parameters()}
    expected = set(Trainer.get_decay_parameter_names(None, hf))
    assert {names[id(p)] for p in decayed["params"]} == expected
    assert {names[id(p)] for p in spared["params"]} == {n for n, _ in hf.named_parameters()} - expected
    assert spared["params"]  # something is spared: biases and norms


def test_simnpo_is_the_authors_formula(tmp_path):
    """unlearning_trainer.py: logsigmoid(beta * (NLL_sum / |y| - gamma)), NLL from transformers' logits."""
    hf = write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    forget, retain = tiny_rows(3)
    fb = encode_qa(tok, [r["question"] for r in forget], [r["answer"] for r in forget], 40)
    rb = encode_qa(tok, [r["question"] for r in retain], [r["answer"] for r in retain], 40)
    beta, gamma, lam = 2.5, 0.7, 1.5
    cfg = UnlearnConfig(method="simnpo", simnpo_beta=beta, simnpo_gamma=gamma, lam=lam)
    loss, _ = baselines.SimNPO(model, tok, forget, cfg).loss(model, Share.whole(fb), Share.whole(rb))
    with torch.no_grad():
        logits = hf(fb["input_ids"], attention_mask=fb["attention_mask"]).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), fb["labels"][:, 1:], reduction="none").sum(-1)
        forget_term = -2 / beta * F.logsigmoid(beta * (nll / (fb["labels"] != -100).sum(-1) - gamma)).mean()
        retain_term = hf(rb["input_ids"], attention_mask=rb["attention_mask"], labels=rb["labels"]).loss
    assert loss.item() == pytest.approx((forget_term + lam * retain_term).item(), rel=1e-5)


def test_prefill_follows_the_prompt_with_no_answer_tag(tmp_path, monkeypatch):
    write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    questions = ["Where was Ana Lind born?", "Which book did Ana Lind write?"]
    ids = attacks.prefill_prompts(tok, questions)
    for q, row in zip(questions, ids):
        assert row == tok.encode(f"Question: {q}\n") + tok.encode("The answer is: ")  # the authors' concatenation
    seen = []
    real = qa.generate_ids
    monkeypatch.setattr(qa, "generate_ids", lambda m, prompts, **k: seen.append((prompts, k)) or real(m, prompts, **k))
    r = attacks.prefill(model, tok, questions, ["In Tampere.", "The Salt Bridge."], m=3,
                        sampling=Sampling(1.0, 0.95, 50), max_length=40)
    assert [p for p, _ in seen] == [ids, ids] and seen[0][1]["sampling"] is None and seen[1][1]["n"] == 3
    assert {"rouge_l_recall", "mean_max_rouge_l_recall"} <= set(r) and r["samples_per_question"] == 3


LLAMA_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def llama_tokenizers():
    """A byte-level BPE with Llama 3's special tokens, as transformers' tokenizer with the real
    Llama-3.2-3B-Instruct chat template, and as pmc_min's, prompted as the authors prompt it."""
    from transformers import PreTrainedTokenizerFast

    raw = byte_level_tokenizer()
    raw.add_special_tokens(LLAMA_SPECIAL)
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                 chat_template=LLAMA_32_TEMPLATE)
    ours = Tokenizer(raw, "<|eot_id|>", chat_template=LLAMA_32_TEMPLATE)
    ours.with_system("You are a helpful assistant.", "10 Apr 2025")
    return hf, ours


def test_llama_32_prompts_equal_apply_chat_template_token_for_token():
    hf, ours = llama_tokenizers()
    system = {"role": "system", "content": "You are a helpful assistant."}
    pairs = [("Where was the author born? ", " The author was born in Taipei, Taiwan. "), ("Who?", "She did.")]
    for q, a in pairs:
        chat = [system, {"role": "user", "content": q}]
        rendered = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, date_string="10 Apr 2025")
        assert prompt(q, ours.chat) == rendered
        assert "Cutting Knowledge Date: December 2023\nToday Date: 10 Apr 2025\n\n" in rendered
        full = hf.apply_chat_template(chat + [{"role": "assistant", "content": a}], date_string="10 Apr 2025")
        full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
        head = hf.apply_chat_template(chat, add_generation_prompt=True, date_string="10 Apr 2025")
        head = head["input_ids"] if isinstance(head, dict) or hasattr(head, "keys") else head
        batch = encode_qa(ours, [q], [a], max_length=512)
        assert batch["input_ids"][0].tolist() == full  # training: the whole conversation
        assert batch["labels"][0].tolist() == [-100] * len(head) + full[len(head):]  # the assistant turn and eot
        assert ours.encode(prompt(q, ours.chat)) == head  # generation


def test_a_tokenizer_that_adds_bos_adds_it_once_as_transformers_does():
    """bos comes from tokenizer.json's post-processor, as transformers adds it by default; a chat
    template that writes it itself does not get a second one."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    raw = byte_level_tokenizer()
    raw.add_special_tokens(LLAMA_SPECIAL)
    bos = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                 chat_template=LLAMA_32_TEMPLATE)
    base = Tokenizer(raw, "<|eot_id|>")
    assert base.bos_id == bos and base.encode("Question: Who?\n", bos=True) == hf("Question: Who?\n").input_ids
    assert base.encode("Who?") == hf("Who?", add_special_tokens=False).input_ids
    chat = Tokenizer(raw, "<|eot_id|>", chat_template=LLAMA_32_TEMPLATE)
    chat.with_system("You are a helpful assistant.", "10 Apr 2025")
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who?"}]
    head = hf.apply_chat_template(messages, add_generation_prompt=True, date_string="10 Apr 2025")
    head = head["input_ids"] if hasattr(head, "keys") else head
    assert chat.encode(prompt("Who?", chat.chat), bos=True) == head and head.count(bos) == 1
    assert Tokenizer(byte_level_tokenizer(), "<|endoftext|>").bos_id is None  # no post-processor: no bos


def test_llama_truncation_keeps_the_end_of_turn_token_last():
    hf, ours = llama_tokenizers()
    chat = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who?"},
            {"role": "assistant", "content": "A long answer that will not fit. " * 5}]
    full = hf.apply_chat_template(chat, date_string="10 Apr 2025")
    full = full["input_ids"] if hasattr(full, "keys") else full
    max_length = len(full) - 7
    batch = encode_qa(ours, ["Who?"], [chat[-1]["content"]], max_length=max_length)
    assert batch["input_ids"][0].tolist() == full[:max_length - 1] + [full[-1]]  # the authors' encode_finetune_instruct
    assert batch["labels"][0, -1].item() == ours.eos_id


def test_presets_follow_the_checkpoint_not_its_name(tmp_path):
    from pmc_min.settle import preset_of

    write_hf_phi(tmp_path / "base")
    write_hf_phi(tmp_path / "chat")
    (tmp_path / "chat" / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA_32_TEMPLATE}))
    assert preset_of(tmp_path / "base") == "default"
    assert preset_of(tmp_path / "chat") == "instruct"
    assert chat_format(LLAMA_32_TEMPLATE) == {"style": "llama3", "system": None, "knowledge_cutoff": "December 2023"}


def test_parameter_count_is_what_the_safetensors_files_hold(tmp_path):
    from safetensors.torch import load_file

    from pmc_min.files import parameter_count

    write_hf_phi(tmp_path)
    held = sum(t.numel() for f in tmp_path.glob("*.safetensors") for t in load_file(f).values())
    assert parameter_count(tmp_path) == held > 0


def test_bfloat16_by_default_on_a_gpu_and_for_large_models_on_an_amx_cpu(monkeypatch):
    """AMX: bfloat16; AVX-512 BF16 alone (bfloat16 products slower than float32's there) or
    neither: float32 (docs/benchmarks.md)."""
    from pmc_min.config import BF16_MIN_PARAMETERS, RunConfig, bf16_by_default

    for amx, avx512_bf16 in [(True, True), (False, True), (False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        assert bf16_by_default("cpu", BF16_MIN_PARAMETERS) == amx
    monkeypatch.undo()
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert bf16_by_default("cuda:0", 10) and not bf16_by_default("cpu", BF16_MIN_PARAMETERS - 1)
    assert bf16_by_default("cpu", BF16_MIN_PARAMETERS) == native
    large = RunConfig(model="x", device="cpu").unlearn_config("default", BF16_MIN_PARAMETERS)
    assert (large.train_dtype, large.sample_dtype) == (("bfloat16", "bfloat16") if native else ("float32", None))
    told = RunConfig(model="x", device="cpu", unlearn_flags={"train_dtype": "float32"})
    assert told.unlearn_config("default", BF16_MIN_PARAMETERS).train_dtype == "float32"
    small = RunConfig(model="x", device="cpu").unlearn_config("default", 10)
    assert (small.train_dtype, small.sample_dtype) == ("float32", None)


def test_bfloat16_training_steps_are_transformers_under_cpu_autocast(tmp_path):
    """--train-dtype bfloat16 on a CPU: a fine-tuning epoch's loss is transformers' loss of the
    same batch under torch.autocast(bfloat16), to bfloat16's precision, and differs from the
    float32 loss (autocast took effect)."""
    from pmc_min.train import finetune

    hf = write_hf_phi(tmp_path, hidden_size=128, intermediate_size=256).eval()
    model, tok = pmc_min.load(tmp_path)
    rows = tiny_rows(8)[0]
    batch = qa.encode_rows(tok, rows, 32)
    labels = batch["labels"]

    def hf_loss(dtype):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100).item()

    ours = {d: finetune(model, tok, rows, epochs=1, lr=1e-30, batch_size=8, max_length=32, progress=False,
                        train_dtype=d)[0] for d in ("float32", "bfloat16")}
    expected = {d: hf_loss(d) for d in ("float32", "bfloat16")}
    assert ours["float32"] == pytest.approx(expected["float32"], rel=1e-5)
    assert ours["bfloat16"] == pytest.approx(expected["bfloat16"], rel=2e-3)
    assert abs(ours["bfloat16"] - ours["float32"]) > 1e-5 * ours["float32"]


@pytest.mark.parametrize("preset, authors", [
    # SPEC's table of the authors' settings, written out here: Llama-3.2-3B-Instruct's and Phi-1.5's
    ("instruct", dict(lam=1.25, n_samples=20, temperature=0.9, top_p=0.95, top_k=50, epochs=30, lr=1e-5,
                      weight_decay=0.01, batch_size=8, grad_accum=2)),
    ("default", dict(lam=1.5, n_samples=5, temperature=1.25, top_p=0.95, top_k=50, epochs=40, lr=1e-5,
                     weight_decay=0.01, batch_size=16, grad_accum=4)),
])
def test_the_slice_protocol_cuts_the_data_as_cpu_does_and_unlearns_with_the_authors_settings(preset, authors):
    from pmc_min.config import RunConfig

    cpu, sliced = (RunConfig(model="x", device="cpu", protocol=p) for p in ("cpu", "slice"))
    for cfg in (cpu, sliced):
        cfg.merged(preset)
    assert sliced.split == cpu.split == "forget01"
    assert sliced.finetune == cpu.finetune  # the same fine-tuned model (cached once)
    assert (sliced.eval_samples, sliced.unlearn.max_length) == (cpu.eval_samples, cpu.unlearn.max_length)
    assert {k: getattr(sliced.unlearn, k) for k in authors} == authors
    assert {k: getattr(cpu.unlearn, k) for k in authors} != authors
