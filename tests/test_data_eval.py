"""TOFU loading, the evaluation formulas, and run.py's behaviour on bad input."""

import numpy as np
import pytest

import pmc_min
from pmc_min import evaluate as ev
from pmc_min.data import load_split
from helpers import TOFU, needs_tofu, run_py


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "forget10.json").write_text('{"question": "q", "answer": "a"}\n{"question": "q", \n')
    with pytest.raises(pmc_min.UserError, match=r"forget10.json, line 2: not valid JSON"):
        load_split(tmp_path, "forget10")
    (tmp_path / "forget10.json").write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    with pytest.raises(pmc_min.UserError, match=r"forget10.json, line 2: missing text field\(s\) answer"):
        load_split(tmp_path, "forget10")
    with pytest.raises(pmc_min.UserError, match=r"retain90.json not found"):
        load_split(tmp_path, "retain90")


@needs_tofu
def test_tofu_splits_are_the_tail_and_head_of_full():
    full = load_split(TOFU, "full")
    assert len(full) == 4000
    for pct, retain in ((1, "retain99"), (5, "retain95"), (10, "retain90")):
        forget = load_split(TOFU, f"forget{pct:02d}")
        assert forget == full[len(full) - len(forget):] and len(forget) == 40 * pct
        assert load_split(TOFU, retain) == full[:len(full) - len(forget)]


@needs_tofu
def test_eval_sets_follow_the_authors_retain_sample():
    sets = ev.eval_sets(TOFU, "forget10")
    retain = load_split(TOFU, "retain90")
    idx = np.random.default_rng(12345).integers(0, len(retain), 400)
    assert sets["retain"][0] == [retain[i]["question"] for i in idx]
    assert len(set(idx)) < 400  # drawn with replacement
    paraphrased = load_split(TOFU, "forget10_perturbed")
    assert sets["forget_paraphrased"] == ([r["paraphrased_question"] for r in paraphrased],
                                          [r["paraphrased_answer"] for r in paraphrased])  # as the authors' loader
    assert len(ev.eval_sets(TOFU, "forget10", full=True)["retain"][0]) == 3600


def test_summary_formulas():
    rouge = {"forget": 0.8, "forget_paraphrased": 0.4, "retain": 0.9, "world_facts": 0.6, "real_authors": 0.3}
    s = ev.summarise(rouge)
    assert s["unlearn_quality"] == pytest.approx(40.0) and s["utility"] == pytest.approx(60.0)


def test_evaluate_scores_generations_against_the_ground_truth(monkeypatch):
    answers = {"q1": "Paris is the capital.", "q2": "She was born in 1990."}
    outputs = {"q1": "Paris is the capital.", "q2": "He writes poems."}
    monkeypatch.setattr(ev, "generate_answers", lambda m, t, qs, **k: [[outputs[q]] for q in qs])
    sets = {name: (list(answers), list(answers.values())) for name in ev.SPLITS}
    r, _ = ev.evaluate(None, None, sets)
    assert r["rouge_l_recall"]["forget"] == pytest.approx((1.0 + 0.0) / 2)
    assert r["unlearn_quality"] == pytest.approx(50.0) and r["utility"] == pytest.approx(50.0)


def test_phi_1_5_without_weights_fails_with_one_sentence(tmp_path):
    from pmc_min.tiny_data import make_dataset
    make_dataset(tmp_path / "data")  # TOFU's layout; ../shared/data/tofu reads the same
    out = run_py("--model", "phi-1_5", "--data-dir", str(tmp_path / "data"),
                 env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert out.returncode == 2
    assert out.stderr.startswith("error: Model 'phi-1_5' not found:") and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1


def test_overunlearn_probe_offline_fails_before_loading_the_model(tmp_path):
    from helpers import write_hf_phi
    from pmc_min.tiny_data import make_dataset

    make_dataset(tmp_path / "data")
    (tmp_path / "data" / "general.json").unlink()  # TOFU has no general split: the probe is wikitext-2
    write_hf_phi(tmp_path / "model")
    out = run_py("--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--eval", "overunlearn",
                 "--out", str(tmp_path / "run"), env={"HF_HUB_OFFLINE": "1", "PMC_MIN_CACHE": str(tmp_path / "c")})
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: wikitext-2 cannot be fetched with HF_HUB_OFFLINE set; pass --probe-text")
    assert not (tmp_path / "c" / "finetuned").exists()  # no fine-tuning was done first


@pytest.mark.parametrize("args, message", [
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--n", "0"], "n (samples per question) must be from 1 to 1000"),
    (["--lambda", "-1"], "lambda must not be negative"),
])
def test_bad_hyperparameters_fail_before_any_work(args, message, tmp_path):
    out = run_py(*args, env={"PMC_MIN_CACHE": str(tmp_path)})
    assert out.returncode == 2 and message.lower() in out.stderr.lower() and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # nothing was built


def test_tiny_general_split_uses_the_authors_vocabulary_outside_any_author(tmp_path):
    """The over-unlearning probe of the embedded default: every birth city, parent's job, genre and
    theme appears in general text that names no author."""
    from pmc_min import tiny_data as tiny
    tiny.make_dataset(tmp_path)
    names = {*tiny.FIRST, *tiny.LAST}  # every author's name is made of these
    general = [f"{r['question']} {r['answer']}" for r in load_split(tmp_path, "general")]
    unrelated = [t for t in general if not any(n in t for n in names)]
    assert len(unrelated) == len(general)
    for word in [*tiny.CITIES, *tiny.JOBS, *tiny.GENRES, *tiny.THEMES]:
        assert any(f" {word}" in t or t.startswith(word[0].upper() + word[1:]) for t in unrelated), word
