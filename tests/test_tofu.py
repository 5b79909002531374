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
    from helpers import run_py
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
