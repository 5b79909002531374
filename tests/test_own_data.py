"""Your own data (--forget-questions, pmc_min.unlearn_questions): unlearning from the
questions alone, self-distilled retain targets, the evaluation against the model's own
answers, answers given for evaluation only that never reach a training batch, and one
sentence for each bad input."""

import json
import sys

import pytest
import torch

import pmc_min
from pmc_min import own_data, pipeline
from pmc_min.qa import strip_tag
from helpers import ROOT, assert_clean_error, rouge_recall, run_py, write_hf_phi

sys.path.insert(0, str(ROOT))
import run  # noqa: E402

CANARY = "ZQXJCANARY"
QUESTIONS = [f"Where was author {i} born?" for i in range(4)]
RETAIN = [f"What did author {i} write?" for i in range(6)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_hf_phi(root / "phi", seed=3)
    (root / "forget.txt").write_text("\n".join(QUESTIONS + QUESTIONS[:1]) + "\n\n")  # one repeated, one blank line
    (root / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    (root / "retain.jsonl").write_text("".join(json.dumps({"question": q, "answer": f"Book {i}.", "id": i}) + "\n"
                                               for i, q in enumerate(RETAIN)))
    (root / "answers.jsonl").write_text("".join(json.dumps({"question": q, "answer": f"In {CANARY} city {i}."}) + "\n"
                                                for i, q in enumerate(QUESTIONS)))
    return root


def flags(root, out, retain="retain.txt", *extra):
    return ["--model", str(root / "phi"), "--forget-questions", str(root / "forget.txt"), "--retain",
            str(root / retain), *extra, "--epochs", "2", "--batch-size", "2", "--grad-accum", "1", "--n", "2",
            "--max-length", "40", "--lr", "1e-3", "--eval-samples", "3", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def canary_run(files, tmp_path_factory):
    """A run with --forget-answers holding a canary, every batch that enters a loss recorded."""
    seen, real = [], pipeline.unlearn

    def spy(*args, **kwargs):
        return real(*args, **kwargs, on_batch=lambda kind, batch: seen.append((kind, batch)))

    out = tmp_path_factory.mktemp("canary") / "run"
    pipeline.unlearn = spy
    try:
        assert run.main(flags(files, out, "retain.txt", "--forget-answers", str(files / "answers.jsonl"))) == 0
    finally:
        pipeline.unlearn = real
    return out, json.loads((out / "results.json").read_text()), seen


def test_forget_answers_reach_the_evaluation_but_never_a_training_batch(canary_run):
    out, results, seen = canary_run
    _, tok = pmc_min.load(out / "model")
    assert {kind for kind, _ in seen} == {"collapse", "retain"} and len(seen) == 8  # 2 epochs x 2 batches x 2
    for _, batch in seen:
        for row in batch["input_ids"].tolist():
            assert CANARY not in tok.decode(row).replace(" ", "")
    for when in ("before", "after"):  # the evaluation read them: all 4 questions are in the examples
        truth = results[when]["ground_truth"]
        assert [e["answer"] for e in truth["examples"]] == [f"In {CANARY} city {i}." for i in range(4)]
        expected = sum(rouge_recall(e["answer"], e["generated"]) for e in truth["examples"]) / 4
        assert truth["rouge_l_recall"]["forget"] == pytest.approx(expected, abs=1e-12)


def test_similarity_to_y0_is_rouge_l_recall_against_the_original_answers(canary_run):
    _, results, _ = canary_run
    y0 = results["before"]["y0"]
    assert len(y0["forget"]) == 4 and len(y0["retain"]) == 6  # the repeated question was dropped
    before, after = results["before"]["similarity_to_y0"], results["after"]["similarity_to_y0"]
    assert before["forget"] == before["retain"] == 1.0  # y0 are the greedy answers before unlearning
    assert [e["y0"] for e in after["examples"]] == y0["forget"]
    expected = sum(rouge_recall(e["y0"], e["generated"]) for e in after["examples"]) / 4
    assert after["forget"] == pytest.approx(expected, abs=1e-12)
    assert results["curves"]["y0"] == y0["forget"]  # PMC's y0 is the evaluation's
    assert results["curves"]["gt_forget_nll"] == [None, None]  # no forget answers to monitor


def test_questions_only_retain_trains_on_the_models_own_greedy_answers(files, canary_run):
    """The self-distilled retain targets are what transformers' greedy generate writes."""
    from transformers import PhiForCausalLM

    _, results, seen = canary_run
    _, tok = pmc_min.load(files / "phi")
    hf = PhiForCausalLM.from_pretrained(files / "phi").eval()
    prompts = [f"Question: {q}\n" for q in RETAIN]
    ids = tok.encode_batch(prompts)
    new = 40 - max(map(len, ids))  # the length budget: prompt + answer within --max-length
    targets = {}
    for q, p in zip(RETAIN, ids):
        out = hf.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=tok.eos_id,
                          pad_token_id=tok.pad_id)[0, len(p):].tolist()
        targets[q] = strip_tag(tok.decode(out))
    assert results["before"]["y0"]["retain"] == [targets[q] for q in RETAIN]
    for kind, batch in seen:
        if kind == "retain":
            for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
                text = tok.decode(row, skip_special_tokens=False)
                question = text.split("\n")[0][len("Question: "):]
                answer = tok.decode([t for t in labels if t != -100]).strip()
                # the target, cut where prompt + target reach --max-length
                assert f"Answer: {targets[question]}".startswith(answer) and len(answer) > len("Answer: ")
                assert answer == f"Answer: {targets[question]}".strip() or len(row) == 40


def test_the_unlearned_model_loads_in_transformers(canary_run):
    from transformers import AutoModelForCausalLM

    out, _, _ = canary_run
    hf = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ours, _ = pmc_min.load(out / "model")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_qa_retain_rows_are_trained_on_as_given(files, tmp_path):
    seen, real = [], pipeline.unlearn

    def spy(*args, **kwargs):
        return real(*args, **kwargs, on_batch=lambda kind, batch: seen.append((kind, batch)))

    pipeline.unlearn = spy
    try:
        assert run.main(flags(files, tmp_path / "run", "retain.jsonl")) == 0
    finally:
        pipeline.unlearn = real
    _, tok = pmc_min.load(files / "phi")
    answers = {tok.decode([t for t in labels if t != -100]).strip()
               for kind, b in seen if kind == "retain" for labels in b["labels"].tolist()}
    assert answers <= {f"Answer: Book {i}." for i in range(6)} and answers
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "ground_truth" not in results["after"] and "y0" not in results["after"]


def test_unlearn_questions_from_the_library(files):
    model, tok = pmc_min.load(files / "phi")
    before = [p.clone() for p in model.parameters()]
    cfg = pmc_min.UnlearnConfig(epochs=2, lr=1e-3, batch_size=2, grad_accum=1, max_length=40, n_samples=2)
    seen = []
    model, curves = pmc_min.unlearn_questions(model, tok, QUESTIONS, retain=RETAIN + QUESTIONS[:1], config=cfg,
                                              progress=False, on_batch=lambda kind, b: seen.append(b))
    assert len(curves["y0"]) == 4 and len(curves["step"]) == 4
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    retained = {tok.decode(row).split("\n")[0] for b in seen[1::2] for row in b["input_ids"].tolist()}
    assert retained <= {f"Question: {q}" for q in RETAIN}  # the forget question given as retain was dropped
    with pytest.raises(pmc_min.UserError, match="npo trains on the forget answers"):
        pmc_min.unlearn_questions(model, tok, QUESTIONS, RETAIN, pmc_min.UnlearnConfig(method="npo"))
    for questions, retain, bad in (([3, *QUESTIONS], RETAIN, "3"), (["  "], RETAIN, "'  '"),
                                   (QUESTIONS, [{"question": "Q?", "answer": None}], "{'question'")):
        with pytest.raises(pmc_min.UserError, match=f"takes questions as non-empty strings .*, not {bad}"):
            pmc_min.unlearn_questions(model, tok, questions, retain, cfg)


def test_reading_questions_keeps_nothing_but_the_question(tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Who?", "answer": "secret", "ssn": 1}\n{"question": "Who?"}\n\n'
                    '{"question": "Where?"}\n')
    assert own_data.read_questions(path) == ["Who?", "Where?"]
    assert "dropped 1 repeated question(s); 2 remain" in capsys.readouterr().out
    assert own_data.read_rows(path, "x", fields=("question", "answer")) == [{"question": "Who?", "answer": "secret"},
                                                                             {"question": "Where?"}]


@pytest.mark.parametrize("content, name, pattern", [
    ("", "q.txt", r"q.txt holds no questions"),
    ('{"question": "a"}\n{"question": \n', "q.jsonl", r"q.jsonl, line 2: not valid JSON"),
    ('{"question": "a"}\n{"text": "b"}\n', "q.jsonl", r"q.jsonl, line 2: no text field \"question\""),
    (None, "missing.txt", r"missing.txt does not exist"),
])
def test_bad_forget_questions_end_in_one_sentence(files, tmp_path, content, name, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = run_py("--model", str(files / "phi"), "--forget-questions", str(path), "--retain",
                 str(files / "retain.txt"), "--out", str(tmp_path / "o"))
    assert_clean_error(out, pattern)
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("extra, pattern", [
    (["--method", "npo"], r"--method npo trains on the forget answers"),
    (["--data-dir", "."], r"--data-dir belong to TOFU runs"),
    (["--eval", "tofu"], r"--eval belong to TOFU runs"),
])
def test_flags_that_need_answers_or_tofu_are_refused(files, tmp_path, extra, pattern):
    assert_clean_error(run_py(*flags(files, tmp_path / "o", "retain.txt", *extra)), pattern)


def test_retain_rules(files, tmp_path):
    assert_clean_error(run_py("--model", str(files / "phi"), "--forget-questions", str(files / "forget.txt")),
                       r"needs --retain FILE")
    assert_clean_error(run_py("--model", str(files / "phi"), "--retain", str(files / "retain.txt")),
                       r"--retain go with --forget-questions FILE")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"question": "a", "answer": "b"}\n{"question": "c"}\n')
    assert_clean_error(run_py(*flags(files, tmp_path / "o", str(mixed))), r"1 of 2 rows have an \"answer\"")
    short = tmp_path / "answers.txt"
    short.write_text("one answer\n")
    assert_clean_error(run_py(*flags(files, tmp_path / "o", "retain.txt", "--forget-answers", str(short))),
                       r"holds 1 answers for 4 forget questions")
