"""Theory against practice: what a PMC run logs of its draws and of log p(y0 | q), the
Bradley-Terry selection, and theory.practice on a synthetic run from an exact
categorical process."""

import json
import math
import random

import numpy as np
import pytest
import torch

import pmc_min
from pmc_min import pmc
from pmc_min.train import UnlearnConfig, unlearn
from helpers import rouge_recall, write_hf_phi
from theory import curated, practice
from helpers import ROOT


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("practice")
    write_hf_phi(root / "phi", seed=4)
    model, tok = pmc_min.load(root / "phi")
    forget = [{"question": f"Where was author {i} born?", "answer": f"In city {i}."} for i in range(5)]
    retain = [{"question": f"What did author {i} write?", "answer": f"Book {i}."} for i in range(5)]
    cfg = UnlearnConfig(epochs=3, lr=1e-3, batch_size=2, grad_accum=1, max_length=40, n_samples=3)
    curves = unlearn(model, tok, forget, retain, cfg, progress=False)
    pmc_min.save(model, tok, root / "after")
    return root, forget, curves


def test_logged_rewards_are_one_minus_rouge_l_recall_against_y0(logged):
    _, forget, curves = logged
    assert len(curves["draw_rewards"]) == 3 and all(len(e) == 5 for e in curves["draw_rewards"])
    assert all(r is not None for r in curves["draw_rewards"][0])  # every question is drawn in the first epoch
    checked = 0
    for rewards, samples in zip(curves["draw_rewards"], curves["draw_samples"]):
        for q, (r, s) in enumerate(zip(rewards, samples)):
            if r is None:
                assert s is None
                continue
            assert len(r) == len(s) == 3
            assert r == pytest.approx([1 - rouge_recall(curves["y0"][q], x) for x in s], abs=1e-12)
            checked += 1
    assert checked >= 5


def hf_logp(folder, question: str, answer: str, max_length: int = 40) -> float:
    """log p("Answer: a" + eos | "Question: q\\n") by transformers, tokenised with `tokenizers` directly
    and cut to max_length tokens, as training rows are."""
    from tokenizers import Tokenizer
    from transformers import PhiForCausalLM

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    prompt = f"Question: {question}\n"
    ids = tok.encode(prompt).ids
    full = (tok.encode(prompt + f"Answer: {answer}").ids + [eos])[:max_length]
    model = PhiForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logp = model(torch.tensor([full])).logits[0, :-1].log_softmax(-1)
    return float(sum(logp[t - 1, full[t]] for t in range(len(ids), len(full))))


def test_logp_y0_equals_transformers_before_and_after(logged):
    root, forget, curves = logged
    assert len(curves["logp_y0"]) == 4  # before training, then after each of 3 epochs
    for q in (0, 3):
        question, y0 = forget[q]["question"], curves["y0"][q]
        assert curves["logp_y0"][0][q] == pytest.approx(hf_logp(root / "phi", question, y0), rel=1e-4, abs=1e-4)
        assert curves["logp_y0"][-1][q] == pytest.approx(hf_logp(root / "after", question, y0), rel=1e-4, abs=1e-4)


def test_bradley_terry_selection_frequencies_are_the_softmax():
    from scipy.stats import chisquare

    scores, tau, trials = [0.9, 0.5, 0.5, 0.2, 0.0], 0.3, 20000
    rng = random.Random(7)
    counts = np.bincount([pmc.select(scores, tau, rng) for _ in range(trials)], minlength=len(scores))
    weights = np.exp((1 - np.asarray(scores)) / tau)
    expected = trials * weights / weights.sum()
    assert chisquare(counts, expected).pvalue > 1e-3
    assert pmc.select(scores) == 4 and pmc.select([0.3, 0.1, 0.1]) == 1  # tau 0: the argmin, first of ties


def test_a_bradley_terry_run_is_reproducible_and_checked(logged):
    root, forget, _ = logged
    retain = [{"question": "What?", "answer": "This."}]
    picks = []
    for _ in range(2):
        model, tok = pmc_min.load(root / "phi")
        cfg = UnlearnConfig(epochs=1, lr=1e-3, batch_size=5, grad_accum=1, max_length=40, n_samples=4,
                            selection_temperature=0.5)
        picks.append(unlearn(model, tok, forget, retain, cfg, progress=False)["final_picks"])
    assert picks[0] == picks[1]
    with pytest.raises(pmc_min.UserError, match="selection temperature must not be negative"):
        UnlearnConfig(selection_temperature=-1).validate()


def synthetic_run(questions: int, k: int, epochs: int, tau: float, seed: int = 0) -> dict:
    """A results.json whose draws come from an exact categorical process: per question, four
    answers with rewards 0 (y0), 0.25, 0.5, 1; the first k draws from a random p0 define the
    empirical p_0, which then evolves by the exact curated update; each epoch draws k
    answers from p_t, and log p(y0 | q) is the exact log p_t(y0)."""
    rng = np.random.default_rng(seed)
    levels = [0.0, 0.25, 0.5, 1.0]
    draws, logp = [[None] * questions for _ in range(epochs)], [[0.0] * questions for _ in range(epochs + 1)]
    for q in range(questions):
        first = rng.choice(4, size=k, p=rng.dirichlet([2.0, 1.0, 1.0, 0.5]))
        p = np.bincount(first, minlength=4) / k
        draws[0][q] = [levels[i] for i in first]
        for t in range(epochs + 1):
            logp[t][q] = math.log(p[0]) if p[0] > 0 else -1e9
            if 0 < t < epochs:
                draws[t][q] = [levels[i] for i in rng.choice(4, size=k, p=p)]
            p = np.asarray(curated.curated_update(list(p), levels, k, tau))
            p = p / p.sum()
    return {"method": "pmc", "config": {"n_samples": k, "selection_temperature": tau},
            "curves": {"draw_rewards": draws, "logp_y0": logp}}


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_theory_practice_recovers_the_prediction_on_an_exact_categorical_process(tau, tmp_path, capsys):
    k, questions, epochs = 4, 3000, 4
    results = synthetic_run(questions, k, epochs, tau)
    report = practice.compare(results)
    for r in report["rows"]:
        n = r["drawn"] * k
        for name in ("reward", "off_top"):  # the mean of n draws from the predicted distributions
            assert abs(r[f"{name}_measured"] - r[f"{name}_predicted"]) < 5 * 0.5 / math.sqrt(n) + 1e-12, (name, r)
        assert abs(r["variance_measured"] - r["variance_predicted"]) < 0.02
    # log p_t(y0) exactly, where the first draws held y0; where they did not, p(y0) = 0 from t = 1
    exact = [[v for v in row if v > -1e8] for row in results["curves"]["logp_y0"]]
    assert report["rows"][2]["logp_y0_predicted"] == pytest.approx(float(np.mean(exact[2])), rel=1e-9)
    if tau == 0:
        m0 = report["rows"][0]["off_top_predicted"]  # best of k: m_t = m_0^(k^t) per question
        per_q = [sum(1 for r in results["curves"]["draw_rewards"][0][q] if r < max(
            results["curves"]["draw_rewards"][0][q])) / k for q in range(questions)]
        assert m0 == pytest.approx(np.mean(per_q))
        assert report["rows"][2]["off_top_predicted"] == pytest.approx(np.mean([m ** (k ** 2) for m in per_q]))
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert practice.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reward increase: holds" in out and "variance to 0: falls" in out and "probability to 0: mean" in out


def load_pareto():
    """tests/benchmarks/pareto.py as a module (it is a script, not a package member)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pareto", ROOT / "tests" / "benchmarks" / "pareto.py")
    pareto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pareto)
    return pareto


def test_theory_practice_refuses_what_is_not_a_pmc_run_in_one_sentence(tmp_path, capsys):
    for folder, pattern in ((tmp_path / "nothing", "cannot be read as a run's results"),
                            (tmp_path, "is not a PMC run that logged its draws")):
        if folder == tmp_path:
            (tmp_path / "results.json").write_text('{"method": "npo", "curves": {}}')
        with pytest.raises(SystemExit) as stop:
            practice.main([str(folder)])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and pattern in err and err.count("\n") == 1


def test_pareto_front_equals_a_skyline_sweep_and_the_quick_grid_has_two_configurations_per_method():
    """The sweep's front (tests/benchmarks/pareto.py) against the classic skyline algorithm:
    sort by x descending (ties by y descending) and keep each point whose y beats every y before it."""
    from hypothesis import given, strategies as st

    pareto = load_pareto()

    @given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12, unique=True))
    def check(coords):
        points = {f"p{i}": c for i, c in enumerate(coords)}
        best, skyline = -1, set()
        for key, (x, y) in sorted(points.items(), key=lambda kv: (-kv[1][0], -kv[1][1])):
            if y > best:
                skyline.add(key)
                best = y
        assert set(pareto.pareto_front(points)) == skyline

    check()
    quick = pareto.grid(quick=True)
    for method in pareto.METHODS:
        assert sum(c["method"] == method and c.get("tau") is None for c in quick) == 2
    assert {c.get("tau") for c in quick} == {None, 0.1, 1.0}
    full = pareto.grid(quick=False)  # lr x epochs x lambda (GA without), and tau 0.1, 1 at both lengths
    assert len(full) == 5 * 3 * 2 * 2 + 3 * 2 + 2 * 2 and all(c in full for c in quick)


def test_pareto_sweep_resumes_a_run_cut_short_and_reports_a_failure(tmp_path, monkeypatch):
    """A point whose folder holds run.json (a run.py that was interrupted) is continued with
    `run.py --resume`, a fresh point gets its configuration's flags, and a failing run is
    reported and counted missing instead of ending the sweep."""
    import subprocess
    from pathlib import Path

    pareto = load_pareto()
    monkeypatch.setattr(pareto, "grid", lambda quick: [dict(method="ga", lr=1e-4, epochs=2, lam=None),
                                                        dict(method="pmc", lr=2e-4, epochs=2, lam=1.5)])
    cut = tmp_path / "runs" / "pmc-lr0.0002-e2-lam1.5-s0"
    cut.mkdir(parents=True)
    (cut / "run.json").write_text("{}")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        out = Path(command[command.index("--resume" if "--resume" in command else "--out") + 1])
        if "--resume" not in command:
            return subprocess.CompletedProcess(command, 3, "", "UserError: no such thing")
        after = {"unlearn_quality": 90.0, "utility": 99.0, "robustness": {"factleak": {"greedy": 0.0}}}
        (out / "results.json").write_text(json.dumps({"after": after, "wall_seconds": 1.0}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pareto.subprocess, "run", fake_run)
    result = pareto.sweep(tmp_path, quick=False, seeds=1, jobs=2)
    assert sorted(c[2] for c in calls) == ["--method", "--resume"]
    assert [c for c in calls if c[2] == "--method"][0][2:10] == ["--method", "ga", "--lr", "0.0001", "--epochs", "2",
                                                                   "--seed", "0"]
    assert [p["name"] for p in result["points"]] == ["pmc-lr0.0002-e2-lam1.5"]
    assert result["missing"] == 1 and not result["complete"]
