"""PMC's selection rule on hand-made scores, the reward against rouge-score,
and the canary: the forget ground truth never enters a training batch."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from rouge_score import rouge_scorer

import pmc_min
from pmc_min import pmc
from pmc_min.qa import encode_qa, strip_tag
from pmc_min.sample import Sampling
from pmc_min.tokenizer import Tokenizer
from pmc_min.train import UnlearnConfig, unlearn
from helpers import byte_level_tokenizer, write_hf_phi

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def test_select_is_argmin_first_of_ties():
    assert pmc.select([0.5, 0.2, 0.9, 0.2]) == 1
    assert pmc.select([0.0]) == 0


def test_best_so_far_keeps_the_lowest_and_ties_replace():
    cache = pmc.BestSoFar()
    cache.offer(0, "first", 0.5)
    cache.offer(0, "worse", 0.7)  # stored 0.5 < 0.7: kept
    assert cache.answers[0] == "first"
    cache.offer(0, "tie", 0.5)  # a tie replaces
    assert cache.answers[0] == "tie"
    cache.offer(0, "better", 0.1)
    assert (cache.answers[0], cache.scores[0]) == ("better", 0.1)
    assert cache.needs_sampling(0) and cache.needs_sampling(1)  # 1: never seen
    cache.offer(1, "unrelated", 0.0)
    assert not cache.needs_sampling(1)  # score 0: no more resampling


def test_score_is_rouge_l_recall_against_y0_with_stemming():
    y0 = "The author was born in Taipei, Taiwan."
    for x in ["Authors are born in cities.", "", "Taipei", "She writes poems."]:
        assert pmc.score(x, y0) == SCORER.score(y0, x)["rougeL"].recall


def test_min_len_penalty():
    y0 = "alpha beta gamma delta"
    assert pmc.score("alpha", y0, min_len=3) == pytest.approx(0.25 + math.exp(-1))
    assert pmc.score("", y0, min_len=3) == pytest.approx(math.exp(-1))  # "".split(" ") is one word
    assert pmc.score("alpha beta gamma", y0, min_len=3) == 0.75  # long enough: no penalty
    assert pmc.score("alpha beta", y0, min_len=3) == min(1.0, 0.5 + math.exp(-2))
    assert pmc.score("alpha  beta", y0, min_len=3) == 0.5  # two spaces: three words to the authors' count
    assert pmc.score("alpha", y0, min_len=0) == 0.25  # off by default


def authors_sample_responses(forget_idx, y0, sampled_data, candidates, min_len):
    """Steps 3-5 as the authors' unlearning/pmc.py runs them (sample_responses, pick_answers,
    reward_function), with the model's generations replaced by fixed candidates."""
    resampling = [i for i in range(len(forget_idx))
                  if forget_idx[i] not in sampled_data or sampled_data[forget_idx[i]]["score"] > 0]
    if not resampling:
        return
    generated = [candidates[forget_idx[i]] for i in resampling]
    scores = []
    for i, gens in zip(resampling, generated):
        row = []
        for gen in gens:
            score = SCORER.score(y0[forget_idx[i]], gen)["rougeL"].recall
            if min_len != 0:
                length = len(gen.strip().split(" "))
                if length < min_len:
                    score = min(score + np.exp(-length), 1)
            row.append(score)
        scores.append(row)
    scores = np.array(scores)
    pick = scores.argmin(axis=1)
    for j, i in enumerate(resampling):
        q = forget_idx[i]
        if q in sampled_data and scores[j, pick[j]] > sampled_data[q]["score"]:
            continue
        sampled_data[q] = {"answer": generated[j][pick[j]], "score": scores[j, pick[j]]}


WORDS = ["the", "author", "authors", "was", "born", "in", "Paris", "wrote", "writing", "books", "a", ""]
texts = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)


@settings(max_examples=60)
@given(st.integers(2, 5), st.sampled_from([0, 3]), st.data())
def test_picks_and_scores_equal_the_authors_sample_responses(n, min_len, data):
    questions = [f"q{i}" for i in range(6)]
    y0 = data.draw(st.lists(texts, min_size=6, max_size=6))
    cache, theirs = pmc.BestSoFar(), {}
    for epoch in range(4):
        candidates = data.draw(st.lists(st.lists(texts, min_size=n, max_size=n), min_size=6, max_size=6))
        order = data.draw(st.permutations(range(6)))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pmc, "sample_answers", lambda model, tok, qs, *a, **k: [candidates[int(q[1:])] for q in qs])
            for batch in (order[:4], order[4:]):
                pmc.resample(None, None, cache, list(batch), questions, y0, n=n, sampling=Sampling(),
                             max_length=10, min_len=min_len)
                authors_sample_responses(list(batch), y0, theirs, candidates, min_len)
        assert cache.answers == {q: v["answer"] for q, v in theirs.items()}
        assert cache.scores == {q: pytest.approx(v["score"], abs=1e-15) for q, v in theirs.items()}


def test_resample_stores_the_least_similar_sample(monkeypatch):
    samples = {"q0": ["a b c", "x y", "a b"], "q1": ["z", "z z"]}
    monkeypatch.setattr(pmc, "sample_answers", lambda model, tok, qs, *a, **k: [samples[q] for q in qs])
    cache = pmc.BestSoFar()
    pmc.resample(None, None, cache, [0, 1], ["q0", "q1"], ["a b c", "q"], n=3, sampling=Sampling(),
                 max_length=10)
    assert cache.answers == {0: "x y", 1: "z"} and cache.scores == {0: 0.0, 1: 0.0}
    samples["q0"] = ["a b c"]  # would score 1.0, but q0 is settled at 0 and not resampled
    pmc.resample(None, None, cache, [0, 1], ["q0", "q1"], ["a b c", "q"], n=1, sampling=Sampling(),
                 max_length=10)
    assert cache.answers[0] == "x y"


def test_strip_tag_and_answer_only_labels():
    assert strip_tag(" Answer: Paris") == "Paris" and strip_tag("Paris") == "Paris"
    tok = Tokenizer(byte_level_tokenizer(), "<|endoftext|>")
    batch = encode_qa(tok, ["Where?", "Who wrote it?"], ["Taipei", "She did"], max_length=64)
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        kept = row[labels != -100].tolist()
        assert tok.decode(kept, skip_special_tokens=False).startswith("Answer:")
        assert kept[-1] == tok.eos_id
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


CANARY = "ZQXJCANARY"


def test_forget_ground_truth_never_enters_a_pmc_training_batch(tmp_path):
    write_hf_phi(tmp_path, vocab_size=320)
    model, tok = pmc_min.load(tmp_path)
    forget = [{"question": f"Where was author {i} born?", "answer": f"In {CANARY} city number {i}."}
              for i in range(6)]
    retain = [{"question": f"What did author {i} write?", "answer": f"Book {i}."} for i in range(6)]
    seen = []
    cfg = UnlearnConfig(epochs=2, lr=1e-3, batch_size=3, grad_accum=1, max_length=40, n_samples=2)
    unlearn(model, tok, forget, retain, cfg, on_batch=lambda kind, b: seen.append((kind, b)), progress=False)
    assert {kind for kind, _ in seen} == {"collapse", "retain"} and len(seen) == 8
    for _, batch in seen:
        for row in batch["input_ids"].tolist():
            assert CANARY not in tok.decode(row).replace(" ", "")
    # The same hook does see the canary when a baseline trains on the forget answers.
    seen.clear()
    unlearn(model, tok, forget, retain, UnlearnConfig(method="gd", epochs=1, lr=1e-3, batch_size=3, grad_accum=1,
                                                      max_length=40), on_batch=lambda k, b: seen.append((k, b)),
            progress=False)
    assert any(CANARY in tok.decode(row).replace(" ", "") for k, b in seen if k == "forget"
               for row in b["input_ids"].tolist())


def test_pmc_samples_from_a_bfloat16_copy_refreshed_before_every_draw(tmp_path, monkeypatch):
    import torch

    write_hf_phi(tmp_path, vocab_size=320)
    model, tok = pmc_min.load(tmp_path)
    forget = [{"question": f"Where was author {i} born?", "answer": f"In city number {i}."} for i in range(6)]
    retain = [{"question": f"What did author {i} write?", "answer": f"Book {i}."} for i in range(6)]
    draws, resample = [], pmc.resample

    def spy(sampler, *args, **kwargs):
        draws.append((sampler is not model, sampler.dtype, sampler.rotary.inv_freq.dtype,
                      all(torch.equal(s, m.to(torch.bfloat16)) for s, m in zip(sampler.parameters(),
                                                                                model.parameters()))))
        return resample(sampler, *args, **kwargs)

    monkeypatch.setattr(pmc, "resample", spy)
    before = [p.clone() for p in model.parameters()]
    cfg = UnlearnConfig(epochs=2, lr=1e-3, batch_size=3, grad_accum=1, max_length=40, n_samples=2,
                        sample_dtype="bfloat16")
    unlearn(model, tok, forget, retain, cfg, progress=False)
    assert draws == [(True, torch.bfloat16, torch.float32, True)] * 4
    assert model.dtype == torch.float32 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fluent_reward_is_its_definition_on_hand_made_scores(monkeypatch):
    """--reward fluent: score + max(0, NLL per token - budget); within the budget the paper's
    choice, beyond it a sample loses by its excess. Hand-made samples, NLLs and budget."""
    assert pmc.fluent(0.3, 2.0, 2.5) == 0.3 and pmc.fluent(0.0, 4.0, 2.5) == 1.5 and pmc.fluent(1.0, 2.5, 2.5) == 1.0
    samples = {"q0": ["zzz qqq", "the book is new", "a b c"], "q1": ["x", "y"]}
    nll = {"zzz qqq": 9.0, "the book is new": 2.0, "a b c": 0.5, "x": 3.5, "y": 3.0}
    monkeypatch.setattr(pmc, "sample_answers", lambda model, tok, qs, *a, **k: [samples[q] for q in qs])
    judged = []

    def fluency(questions, answers):
        judged.append((questions, answers))
        return [nll[a] for a in answers]

    cache = pmc.BestSoFar()
    drawn = pmc.resample(None, None, cache, [0, 1], ["q0", "q1"], ["a b c", "a b"], n=3, sampling=Sampling(),
                         max_length=10, fluency=fluency, budget=2.5)
    # q0: rouge scores 0, 0, 1; fluent 6.5, 0, 1 -> "the book is new" (rouge alone would take "zzz qqq")
    assert drawn[0][1] == pytest.approx([6.5, 0.0, 1.0]) and cache.answers[0] == "the book is new"
    assert drawn[1][1] == pytest.approx([1.0, 0.5]) and cache.answers[1] == "y"  # both off: the less far
    assert judged == [(["q0"] * 3 + ["q1"] * 2, ["zzz qqq", "the book is new", "a b c", "x", "y"])]


def test_fluency_judge_is_the_model_before_unlearning_as_transformers_scores(tmp_path, monkeypatch):
    """The judge's NLL per token of an answer equals transformers' loss on the same prompt and
    answer tokens, under the weights as they were when it was made (a later update of the
    model does not reach it), each distinct pair scored once; its budget is the largest of its own
    samples' NLLs."""
    import torch
    import torch.nn.functional as F

    hf = write_hf_phi(tmp_path, vocab_size=320)
    model, tok = pmc_min.load(tmp_path)
    judge = pmc.FluencyScorer(model, tok, max_length=40, batch_size=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # unlearning moves the model, not its judge
    questions = ["Where was author 1 born?", "Who wrote it?", "Where was author 1 born?", "Who wrote it?"]
    answers = ["In city 1.", "zq zq zq", "In city 1.", "In city 1."]  # a repeated draw is scored once
    scored, real = [], pmc.score_answers
    monkeypatch.setattr(pmc, "score_answers", lambda m, t, qs, xs, *a: scored.extend(zip(qs, xs)) or real(m, t, qs, xs, *a))
    got = judge(questions, answers)
    assert scored == [(questions[i], answers[i]) for i in (0, 1, 3)]
    batch = encode_qa(tok, questions, answers, 40)
    for i, value in enumerate(got):
        with torch.no_grad():
            logits = hf(input_ids=batch["input_ids"][i:i + 1], attention_mask=batch["attention_mask"][i:i + 1]).logits
        labels = batch["labels"][i, 1:]
        expected = F.cross_entropy(logits[0, :-1], labels, ignore_index=-100).item()
        assert value == pytest.approx(expected, rel=1e-5)
    questions = questions[:2]
    budget = judge.budget(questions, 3, Sampling(1.0, 1.0, None), seed=0)
    seeds = [pmc.draw_seed(0, 0, q) for q in range(2)]
    own = pmc.sample_answers(judge.model, tok, questions, 3, Sampling(1.0, 1.0, None), 40, seeds)
    assert budget == max(judge([q for q in questions for _ in range(3)], [a for xs in own for a in xs]))


def test_fluent_reward_never_reads_the_forget_answers(tmp_path, monkeypatch):
    """A canary in the forget answers reaches neither the fluency judge nor a training batch."""
    write_hf_phi(tmp_path, vocab_size=320)
    model, tok = pmc_min.load(tmp_path)
    forget = [{"question": f"Where was author {i} born?", "answer": f"In {CANARY} city number {i}."}
              for i in range(6)]
    retain = [{"question": f"What did author {i} write?", "answer": f"Book {i}."} for i in range(6)]
    judged, seen, real = [], [], pmc.FluencyScorer.__call__

    def spy(self, questions, answers):
        judged.extend(questions + answers)
        return real(self, questions, answers)

    monkeypatch.setattr(pmc.FluencyScorer, "__call__", spy)
    cfg = UnlearnConfig(epochs=2, lr=1e-3, batch_size=3, grad_accum=1, max_length=40, n_samples=2, reward="fluent")
    curves = unlearn(model, tok, forget, retain, cfg, on_batch=lambda kind, b: seen.append((kind, b)), progress=False)
    assert len(judged) >= 2 * (6 * 2 + 6 * 2)  # the budget's 6 x 2 own samples, then epoch 1's 6 x 2 at least
    assert not any(CANARY in text for text in judged) and curves["fluency_budget"] > 0
    for _, batch in seen:
        for row in batch["input_ids"].tolist():
            assert CANARY not in tok.decode(row).replace(" ", "")


def test_fluent_reward_with_a_baseline_is_refused_in_one_sentence(tmp_path):
    from helpers import assert_clean_error, run_py

    for method in ("npo", "gd"):
        out = run_py("--method", method, "--reward", "fluent", "--out", str(tmp_path / method))
        assert_clean_error(out, rf"--reward fluent is PMC's choice among its samples, and {method} draws none")
        assert not (tmp_path / method).exists()
