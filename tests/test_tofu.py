"""TOFU's standard metrics against independent computations: the KS test and the
harmonic mean against scipy, per-answer probabilities against transformers' logits,
and the headline numbers against TOFU's own aggregation formulas."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from scipy import stats as sps

import pmc_min
from pmc_min import stats, tofu
from pmc_min.data import load_split
from helpers import TOFU, needs_tofu, write_hf_phi

samples = st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=60)


@settings(max_examples=200)
@given(samples, samples, st.integers(0, 3))
def test_ks_2samp_equals_scipy(x, y, rounding):
    x, y = np.round(x, rounding), np.round(y, rounding)  # rounding makes ties, within and across samples
    d, p = stats.ks_2samp(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's exact sum can fail and fall back to its asymptotic formula
        try:
            ref = sps.ks_2samp(x, y, method="exact")
        except RuntimeWarning:
            assume(False)  # those cases: test_ks_p_value_by_enumerating_every_split
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("n, m", [(7, 7), (5, 8), (1, 6), (6, 6), (4, 9)])
def test_ks_p_value_by_enumerating_every_split(n, m):
    """The null distribution itself: every way to split n + m distinct values into the two samples."""
    pooled = np.arange(n + m, dtype=float)
    ds = [stats.ks_statistic(pooled[list(c)], np.delete(pooled, list(c)))
          for c in itertools.combinations(range(n + m), n)]
    for x in ([0.0] * n, list(range(n))):  # including all-tied samples, where scipy's exact sum fails (p = 1)
        y = [0.0] * (m - 1) + [1.0]
        d, p = stats.ks_2samp(x, y)
        assert p == pytest.approx(sum(e >= d - 1e-12 for e in ds) / len(ds), rel=1e-12)
    rng = np.random.default_rng(n * m)
    for _ in range(20):
        x, y = rng.normal(size=n), rng.normal(0.8, size=m)
        d, p = stats.ks_2samp(x, y)
        assert p == pytest.approx(sum(e >= d - 1e-12 for e in ds) / len(ds), rel=1e-12)


@pytest.mark.parametrize("n, m, shift", [(400, 400, 0.0), (400, 400, 1.0), (40, 400, 0.5), (200, 40, 2.0)])
def test_ks_2samp_equals_scipy_at_tofus_sizes(n, m, shift):
    rng = np.random.default_rng(n + m)
    x, y = rng.lognormal(size=n), rng.lognormal(shift, size=m)
    d, p = stats.ks_2samp(x, y)
    ref = sps.ks_2samp(x, y)  # scipy's default: exact at these sizes
    assert d == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-9)
    # the statistic is invariant under a monotone map of both samples: TOFU's 1/TR gives the same test
    assert stats.ks_2samp(1 / x, 1 / y) == (d, p)


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12))
def test_harmonic_mean_equals_scipy(values):
    assert stats.harmonic_mean(values) == pytest.approx(float(sps.hmean(values)), rel=1e-12, abs=1e-300)


def tofu_aggregate(losses: dict, ref_forget: dict):
    """TOFU's aggregate_eval_stat.py formulas, written from its get_model_utility and get_forget_quality
    (curr_stat_1 = exp(perturbed - paraphrased) is its truth ratio, the reciprocal of open-unlearning's)."""
    out = []
    for name in ("retain", "real_authors", "world_facts"):
        gt, para, pert = losses[name]["answer"], losses[name]["paraphrased"], losses[name]["perturbed"]
        if name == "retain":
            prob = np.mean(np.exp(-gt))
        else:
            true = np.exp(-gt)
            prob = np.mean(true / np.concatenate([true[:, None], np.exp(-pert)], axis=1).sum(-1))
        ratio = np.exp(pert.mean(-1) - para)
        out += [prob, losses[name]["rouge"], np.mean(np.maximum(0, 1 - 1 / ratio))]
    unlearn = np.exp(losses["forget"]["perturbed"].mean(-1) - losses["forget"]["paraphrased"])
    retain = np.exp(ref_forget["perturbed"].mean(-1) - ref_forget["paraphrased"])
    return sps.hmean(out), sps.ks_2samp(unlearn, retain).pvalue


def test_headline_numbers_equal_tofus_aggregation_on_hand_made_losses():
    rng = np.random.default_rng(0)

    def fake(n, k):
        return {"answer": rng.uniform(0.1, 3, n), "paraphrased": rng.uniform(0.1, 3, n),
                "perturbed": rng.uniform(0.1, 3, (n, k)), "rouge": rng.uniform(0.2, 1)}

    losses = {"forget": fake(40, 5), "retain": fake(50, 5), "real_authors": fake(20, 3), "world_facts": fake(25, 3)}
    reference = fake(40, 5)
    splits = {name: tofu.split_metrics(name, l, l["rouge"]) for name, l in losses.items()}
    components = [splits[s][m] for s in tofu.UTILITY_SPLITS for m in ("probability", "rouge_l_recall", "truth_ratio")]
    utility, forget_quality = tofu_aggregate(losses, reference)
    assert stats.harmonic_mean(components) == pytest.approx(utility, rel=1e-12)
    d, p = stats.ks_2samp(tofu.truth_ratios(losses["forget"]), tofu.truth_ratios(reference))
    assert p == pytest.approx(forget_quality, rel=1e-9)
    tr = np.exp(losses["forget"]["perturbed"].mean(-1) - losses["forget"]["paraphrased"])
    assert splits["forget"]["truth_ratio"] == pytest.approx(np.mean(np.minimum(tr, 1 / tr)))  # TOFU's forget statistic


def open_unlearning_row(hf_tok, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) as open-unlearning's preprocess_chat_instance builds a base model's row
    with its "Question: " / "\\n" / "Answer: " tags: the prompt, tags included, tokenised alone
    and masked by its length; the answer after it; eos appended."""
    wrapped = f"Question: {question}\nAnswer: "
    ids = hf_tok(wrapped + answer, add_special_tokens=True)["input_ids"]
    prompt = hf_tok(wrapped, add_special_tokens=True)["input_ids"]
    if ids[-1] != hf_tok.eos_token_id:
        ids = ids + [hf_tok.eos_token_id]
    return ids, [-100] * len(prompt) + ids[len(prompt):]


def test_answer_losses_equal_transformers_on_open_unlearnings_rows(tmp_path):
    """avg_loss as open-unlearning's evaluator computes it with a transformers model: the summed
    token NLL of the labelled tokens divided by their number, on its rows (the tag in the prompt)."""
    from transformers import PreTrainedTokenizerFast

    hf = write_hf_phi(tmp_path)
    model, tok = pmc_min.load(tmp_path)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|endoftext|>")
    questions = ["Where was the author born?", "What genre does she write in?", "Who?"]
    answers = ["The author was born in Taipei.", "Leadership.", "She writes in the genre of leadership, mostly."]
    ours = tofu.avg_losses(model, tok, questions, answers, max_length=64, batch_size=2)
    for q, a, loss in zip(questions, answers, ours):
        ids, labels = open_unlearning_row(hf_tok, q, a)
        assert "Answer:" not in hf_tok.decode([t for t in labels if t != -100])  # the tag is not scored
        with torch.no_grad():
            expected = hf(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        assert loss == pytest.approx(expected, rel=1e-5)


def test_tofu_metrics_of_a_model_are_consistent_with_its_losses(tmp_path):
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path / "data")
    write_hf_phi(tmp_path / "model")
    model, tok = pmc_min.load(tmp_path / "model")
    sets = {k: rows[:6] for k, rows in tofu.tofu_sets(tmp_path / "data", "forget10").items()}
    reference = [1.0, 2.0, 0.5, 3.0, 0.25, 1.5]
    r = tofu.evaluate(model, tok, sets, max_length=64, reference_forget=reference)
    assert set(r["components"]) == {f"{s}_{m}" for s in ("retain", "real_authors", "world_facts")
                                    for m in ("probability", "rouge_l_recall", "truth_ratio")}
    assert r["model_utility"] == pytest.approx(float(sps.hmean(list(r["components"].values()))))
    assert r["forget_quality"] == pytest.approx(sps.ks_2samp(r["truth_ratio"]["forget"], reference).pvalue)
    assert r["truth_ratio"]["reference_forget"] == reference and len(r["truth_ratio"]["forget"]) == 6


def test_tiny_data_has_tofus_perturbed_files(tmp_path):
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path)
    full = load_split(tmp_path, "full")
    sets = tofu.tofu_sets(tmp_path, "forget10")
    assert [r["question"] for r in sets["retain"]] == [r["question"] for r in full[:len(sets["retain"])]]
    assert all(len(r["perturbed"]) == 5 for r in sets["retain"])
    world = load_split(tmp_path, "world_facts")
    for r, w in zip(sets["world_facts"], world):
        options = {w[f"option{i}"] for i in range(1, 5)}
        assert r["paraphrased"] == r["answer"] == w["answer"] and set(r["perturbed"]) == options - {w["answer"]}


@needs_tofu
def test_tofu_files_read_as_tofu_evaluates_them():
    sets = tofu.tofu_sets(TOFU, "forget10")
    assert {k: len(v) for k, v in sets.items()} == {"forget": 400, "retain": 400, "real_authors": 100,
                                                     "world_facts": 117}
    assert {len(r["perturbed"]) for r in sets["forget"] + sets["retain"]} == {5}
    assert sets["forget"][0]["paraphrased"] == load_split(TOFU, "forget10_perturbed")[0]["paraphrased_answer"]


def test_malformed_perturbed_answers_end_in_one_sentence(tmp_path):
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path)
    (tmp_path / "world_facts_perturbed.json").write_text('{"question": "q", "answer": "a", "perturbed_answer": "b"}\n')
    with pytest.raises(pmc_min.UserError, match=r"world_facts_perturbed.json, row 1: perturbed_answer must be a list"):
        tofu.tofu_sets(tmp_path, "forget10")


def test_run_py_eval_tofu_writes_what_recomputes_both_headline_numbers(tmp_path):
    from helpers import assert_clean_error, run_py
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path / "data")
    write_hf_phi(tmp_path / "phi", seed=2)
    write_hf_phi(tmp_path / "ref", seed=3)
    common = ["--model", str(tmp_path / "phi"), "--data-dir", str(tmp_path / "data"), "--finetune-epochs", "0",
              "--epochs", "1", "--batch-size", "5", "--grad-accum", "1", "--n", "2", "--max-length", "64", "--limit", "10", "--no-progress"]
    done = run_py(*common, "--eval", "tofu", "--reference-model", str(tmp_path / "ref"), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    # without --reference-model: the base model fine-tuned on the retain rows, built once and cached
    built = run_py(*common, "--eval", "tofu", "--out", str(tmp_path / "auto"), env={"PMC_MIN_CACHE": str(tmp_path / "c")})
    assert built.returncode == 0, built.stderr
    (recipe,) = (tmp_path / "c" / "finetuned").glob("*/recipe.json")
    assert __import__("json").loads(recipe.read_text())["rows"] == 10  # --limit 10 retain rows
    results = __import__("json").loads((tmp_path / "run" / "results.json").read_text())
    for when in ("before", "after"):
        t = results[when]["tofu"]
        assert len(t["truth_ratio"]["forget"]) == len(t["truth_ratio"]["reference_forget"]) == 10
        ref = sps.ks_2samp(t["truth_ratio"]["forget"], t["truth_ratio"]["reference_forget"])
        assert t["forget_quality"] == pytest.approx(ref.pvalue) and t["ks_statistic"] == pytest.approx(ref.statistic)
        assert t["model_utility"] == pytest.approx(float(sps.hmean(list(t["components"].values()))))
        assert len(t["components"]) == 9
        # open-unlearning's files: the same headline numbers; the model before unlearning in before/
        folder = tmp_path / "run" / ("before" if when == "before" else "")
        summary = __import__("json").loads((folder / "TOFU_SUMMARY.json").read_text())
        assert (summary["forget_quality"], summary["model_utility"]) == (t["forget_quality"], t["model_utility"])
        assert "open_unlearning" not in t
        answers = results[when]["answers"]["forget"]  # every greedy forget answer is kept, not only 5
        assert len(answers) == 10 and answers[:5] == [e["generated"] for e in results[when]["examples"]["forget"]]
    # A run's own TOFU_EVAL.json as the reference: the same model again, forget quality 1.0.
    logs = str(tmp_path / "run" / "TOFU_EVAL.json")
    again = run_py(*common, "--eval", "tofu", "--reference-logs", logs, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    summary = __import__("json").loads((tmp_path / "again" / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] == 1.0
    (tmp_path / "bad.json").write_text('{"forget_truth_ratio": []}')
    assert_clean_error(run_py(*common, "--eval", "tofu", "--reference-logs", str(tmp_path / "bad.json")),
                       r"is not an open-unlearning TOFU_EVAL\.json")
    assert_clean_error(run_py(*common, "--reference-logs", logs), r"add --eval tofu")
    assert_clean_error(run_py(*[a if a != "10" else "8" for a in common], "--eval", "tofu", "--reference-logs", logs),
                       r"scores 10 forget items, and this run's forget set has 8")


def test_open_unlearning_logs_follow_its_formulas(tmp_path):
    """TOFU_EVAL.json's entries recomputed as open-unlearning computes them (memorization.py's
    probability and truth_ratio with its 1e-10, rouge-score's ROUGE-1 and ROUGE-L, scipy's hmean and
    ks_2samp), and one answer's avg_loss against transformers on open-unlearning's own row."""
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from pmc_min import open_unlearning
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path / "data")
    write_hf_phi(tmp_path / "model")
    model, tok = pmc_min.load(tmp_path / "model")
    sets = {k: rows[:5] for k, rows in tofu.tofu_sets(tmp_path / "data", "forget10").items()}
    reference = [1.0, 2.0, 0.5, 3.0, 0.25]
    r = tofu.evaluate(model, tok, sets, max_length=64, reference_forget=reference, open_unlearning=True)
    logs = r["open_unlearning"]
    assert list(logs) == sorted(logs) and len(logs) == 22
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for pre in ("forget", "retain", "ra", "wf"):
        for name in (f"{pre}_Q_A_Prob", f"{pre}_Q_A_PERT_Prob"):
            entries = logs[name]["value_by_index"]
            assert list(entries) == ["0", "1", "2", "3", "4"]
            for e in entries.values():
                assert np.allclose(e["prob"], np.exp(-np.asarray(e["avg_loss"])), rtol=1e-12)
            assert logs[name]["agg_value"] == pytest.approx(np.mean([e["prob"] for e in entries.values()]))
        for e in logs[f"{pre}_Q_A_ROUGE"]["value_by_index"].values():
            s = scorer.score(e["ground_truth"], e["generation"])
            assert (e["rouge1_recall"], e["rougeL_recall"]) == (s["rouge1"].recall, s["rougeL"].recall)
            assert e["rougeL_f1"] == pytest.approx(s["rougeL"].fmeasure, abs=1e-12)
        correct = logs[f"{pre}_Q_A_PARA_Prob" if pre in ("forget", "retain") else f"{pre}_Q_A_Prob"]
        c = np.array([e["avg_loss"] for e in correct["value_by_index"].values()])
        w = np.array([np.mean(e["avg_loss"]) for e in logs[f"{pre}_Q_A_PERT_Prob"]["value_by_index"].values()])
        tr = np.exp(-w) / (np.exp(-c) + 1e-10)  # open-unlearning: wrong / correct
        # pmc_min leaves out the 1e-10, a relative difference of at most 1e-10 / P(correct) (documented)
        rtol = 1e-6 + 1e-10 / np.exp(-c).min()
        entry = logs["forget_truth_ratio" if pre == "forget" else f"{pre}_Truth_Ratio"]
        assert np.allclose([e["score"] for e in entry["value_by_index"].values()], tr, rtol=rtol, atol=0)
        agg = np.mean(np.minimum(tr, 1 / (tr + 1e-10))) if pre == "forget" else np.mean(np.maximum(0, 1 - tr))
        assert entry["agg_value"] == pytest.approx(agg, rel=rtol, abs=rtol * tr.max())
    for pre in ("ra", "wf"):
        p = np.array([e["prob"] for e in logs[f"{pre}_Q_A_Prob"]["value_by_index"].values()])
        wrong = np.array([np.sum(e["prob"]) for e in logs[f"{pre}_Q_A_PERT_Prob"]["value_by_index"].values()])
        got = [e["prob"] for e in logs[f"{pre}_Q_A_Prob_normalised"]["value_by_index"].values()]
        assert np.allclose(got, p / (p + wrong + 1e-10), rtol=1e-6)
    utility = [logs[n]["agg_value"] for n in (  # open-unlearning's model_utility.yaml
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE",
        "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")]
    assert logs["model_utility"]["agg_value"] == pytest.approx(float(sps.hmean(utility))) == r["model_utility"]
    forget_scores = [e["score"] for e in logs["forget_truth_ratio"]["value_by_index"].values()]
    assert logs["forget_quality"]["agg_value"] == pytest.approx(sps.ks_2samp(forget_scores, reference).pvalue)
    assert open_unlearning.summary(logs) == {k: logs[k]["agg_value"] for k in (
        "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_quality", "forget_truth_ratio", "model_utility")}
    # One avg_loss against transformers on open-unlearning's row of that question and answer.
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "model" / "tokenizer.json"), eos_token="<|endoftext|>")
    rows = [open_unlearning_row(hf_tok, r["question"], r["answer"]) for r in sets["forget"]]
    i = min(range(len(rows)), key=lambda i: len(rows[i][0]))  # one within max_length, uncut
    ids, labels = rows[i]
    assert len(ids) <= 64
    with torch.no_grad():
        expected = hf(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert logs["forget_Q_A_Prob"]["value_by_index"][str(i)]["avg_loss"] == pytest.approx(expected, rel=1e-5)


def test_reference_logs_that_are_not_open_unlearnings_end_in_one_sentence(tmp_path):
    from pmc_min import open_unlearning

    cases = {"not json": "{", "no truth ratios": '{"forget_Q_A_Prob": {}}',
             "no scores": '{"forget_truth_ratio": {"agg_value": 0.5}}',
             "a bad score": '{"forget_truth_ratio": {"value_by_index": {"0": {"score": "x"}}}}',
             "negative": '{"forget_truth_ratio": {"value_by_index": {"0": {"score": -1}}}}'}
    for name, text in cases.items():
        (tmp_path / "logs.json").write_text(text)
        with pytest.raises(pmc_min.UserError, match=r"^--reference-logs .*\.$"):
            open_unlearning.reference_truth_ratios(tmp_path / "logs.json")
    with pytest.raises(pmc_min.UserError, match="cannot be read"):
        open_unlearning.reference_truth_ratios(tmp_path / "absent.json")
    (tmp_path / "logs.json").write_text('{"forget_truth_ratio": {"value_by_index": {"1": {"score": 2}, '
                                        '"0": {"score": 0.5}}}}')
    assert open_unlearning.reference_truth_ratios(tmp_path / "logs.json") == [0.5, 2.0]  # index order
