"""The robustness evaluations on hand-built cases."""

import numpy as np
import pytest

import pmc_min
from pmc_min import attacks
from pmc_min.sample import Sampling
from helpers import write_hf_phi

QUESTIONS = ["Where was Ana Lind born?", "Which book did Ana Lind write?"]
ANSWERS = ["Ana Lind was born in Tampere in 1961.", "She wrote \"The Salt Bridge\"."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi")
    write_hf_phi(path)
    return pmc_min.load(path)


def test_a_model_that_answers_the_ground_truth_leaks_one(monkeypatch):
    truth = dict(zip(QUESTIONS, ANSWERS))
    monkeypatch.setattr(attacks, "generate_answers",
                        lambda model, tok, qs, n, **k: [["unrelated words"] * (n - 1) + [truth[q]] for q in qs])
    r = attacks.leakage(None, None, QUESTIONS, ANSWERS, m=5, sampling=Sampling(), max_length=50)
    assert r["mean_max_rouge_l_recall"] == 1.0 and r["mean_rouge_l_recall"] == 0.2  # 1 of 5 samples is the truth
    monkeypatch.setattr(attacks, "generate_answers", lambda model, tok, qs, n, **k: [["unrelated words"] * n] * len(qs))
    r = attacks.leakage(None, None, QUESTIONS, ANSWERS, m=5, sampling=Sampling(), max_length=50)
    assert r["mean_max_rouge_l_recall"] == 0.0 == r["mean_rouge_l_recall"]


def test_over_unlearning_difference_is_exactly_zero_for_identical_models(tiny, tmp_path):
    model, tok = tiny
    pmc_min.save(model, tok, tmp_path / "copy")
    twin, _ = pmc_min.load(tmp_path / "copy")
    probe = ["Tampere is a city in Finland.", "The Salt Bridge was built in 1961 near the harbour."]
    tokens = set(range(tok.vocab_size))
    a, b = attacks.token_probs(model, tok, probe, tokens), attacks.token_probs(twin, tok, probe, tokens)
    r = attacks.overunlearn(a, b)
    assert r["n_tokens"] == len(a) > 10 and r["mean"] == 0.0 and r["std"] == 0.0
    shifted = attacks.overunlearn([p * 0.5 for p in a], a)
    assert shifted["mean"] == pytest.approx(-0.5 * np.mean(a))


def test_forget_tokens_are_the_answer_pieces_found_in_the_probe(tiny):
    _, tok = tiny
    tokens = attacks.forget_tokens(tok, ANSWERS, ["born in Tampere, wrote books"], min_chars=1)
    answer_ids = {i for a in ANSWERS for i in tok.encode(" " + a)}
    probe_ids = set(tok.encode("born in Tampere, wrote books"))
    assert tokens == answer_ids & probe_ids and tokens


def test_least_likely_option_attack(monkeypatch):
    rows = [{"question": f"q{i}", "paraphrased_answer": "true", "perturbed_answer": ["a", "b", "c"]} for i in range(8)]
    # The true answer (option 0) is the least likely in the first 6 questions.
    table = {f"q{i}": np.array([0.05, 0.3, 0.3, 0.35]) if i < 6 else np.array([0.4, 0.2, 0.2, 0.2]) for i in range(8)}
    monkeypatch.setattr(attacks, "option_scores", lambda model, tok, q, options, max_length: table[q])
    r = attacks.mcq(None, None, rows)
    assert r["least_likely_accuracy"] == 0.75 and r["chance"] == 0.25


def test_fact_share_and_tofu_facts():
    row = {"question": "Where was Ana Lind born?", "answer": "Ana Lind was born in Tampere, Finland in 1961."}
    assert attacks.facts_of(row) == ["1961", "Finland", "Tampere"]  # the names the question gives away are not facts
    assert attacks.facts_of({**row, "facts": ["Tampere"]}) == ["Tampere"]
    assert attacks.fact_share([["Tampere", "1961"]], [["born in tampere", "no"]]) == 0.5
    assert attacks.fact_share([["Tampere"]], [["Helsinki"]]) == 0.0


def viewer_page(texts: list[str], offset: int) -> dict:
    """A page as the hub's dataset viewer /rows endpoint returns it."""
    return {"features": [{"feature_idx": 0, "name": "text", "type": {"dtype": "string", "_type": "Value"}}],
            "rows": [{"row_idx": offset + i, "row": {"text": t}, "truncated_cells": []} for i, t in enumerate(texts)],
            "num_rows_total": 36718, "num_rows_per_page": 100, "partial": False}


def test_wikitext_probe_takes_the_first_paragraphs_and_caches_them(tmp_path, monkeypatch):
    from pmc_min.data import wikitext_probe

    monkeypatch.setenv("PMC_MIN_CACHE", str(tmp_path))
    pages = {0: ["", " = Valkyria Chronicles III = \n", ""],  # wikitext's raw rows: empty lines, headings
             3: [" Senjō no Valkyria 3 , is a game .  \n", " = = Gameplay = = \n", " It is played\tin turns . \n"],
             6: ["", " The third one . \n", " The fourth . \n"]}
    asked = []

    def fetch(offset):
        asked.append(offset)
        return viewer_page(pages[offset], offset)

    got = wikitext_probe(3, fetch=fetch)
    assert got == ["Senjō no Valkyria 3 , is a game .", "It is played in turns .", "The third one ."]
    assert asked == [0, 3, 6]
    assert wikitext_probe(3, fetch=lambda offset: pytest.fail("the cached copy is read")) == got


def test_wikitext_probe_offline_fails_with_one_sentence(tmp_path, monkeypatch):
    from pmc_min.data import wikitext_probe

    monkeypatch.setenv("PMC_MIN_CACHE", str(tmp_path))

    def fetch(offset):
        raise ConnectionError("no network")

    with pytest.raises(pmc_min.UserError, match=r"^wikitext-2 could not be fetched .*--probe-text FILE"):
        wikitext_probe(100, fetch=fetch)
    with pytest.raises(pmc_min.UserError, match="only 1 paragraphs"):
        wikitext_probe(2, fetch=lambda offset: viewer_page([" One . \n"] if offset == 0 else [], offset))
    assert not (tmp_path / "probe").exists() or not any((tmp_path / "probe").iterdir())
