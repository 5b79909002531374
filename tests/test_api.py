"""The public API is a promise: every name in pmc_min.__all__ imports, and the spellings that
earlier versions documented keep working, with a DeprecationWarning, exactly as the new ones."""

import pytest
import torch

import pmc_min
from pmc_min import qa
from helpers import write_hf_phi

PROMPTS = ["Question: Where was the author born?\n", "Question: Who?\n"]


def test_every_public_name_imports():
    for name in pmc_min.__all__:
        assert getattr(pmc_min, name) is not None, name


@pytest.fixture(scope="module")
def phi(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    write_hf_phi(folder)
    return pmc_min.load(folder)


def test_generate_with_greedy_true_still_decodes_greedily(phi):
    model, tok = phi
    with pytest.warns(DeprecationWarning, match=r"sampling=pmc_min.Sampling\(temperature, top_p, top_k\)"):
        old = pmc_min.generate(model, tok, PROMPTS, max_new_tokens=8, greedy=True)
    assert old == pmc_min.generate(model, tok, PROMPTS, max_new_tokens=8)


def test_generate_with_sampling_keywords_draws_what_sampling_draws(phi):
    model, tok = phi
    with pytest.warns(DeprecationWarning):
        old = pmc_min.generate(model, tok, PROMPTS, n=3, max_new_tokens=8, temperature=1.25, top_p=0.95, top_k=50,
                               seed=7)
    new = pmc_min.generate(model, tok, PROMPTS, n=3, max_new_tokens=8, sampling=pmc_min.Sampling(1.25, 0.95, 50),
                           seed=7)
    assert old == new
    ids = tok.encode_batch(PROMPTS)
    with pytest.warns(DeprecationWarning):
        old_ids = pmc_min.generate_ids(model, ids, n=2, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                       temperature=0.7, seed=1)
    assert old_ids == pmc_min.generate_ids(model, ids, n=2, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                           sampling=pmc_min.Sampling(0.7), seed=1)


def test_generate_refuses_an_unknown_keyword_and_a_mix_of_old_and_new(phi):
    model, tok = phi
    with pytest.raises(TypeError, match="unexpected keyword argument 'temp'"):
        pmc_min.generate(model, tok, PROMPTS, temp=1.0)
    with pytest.raises(TypeError, match="not both"):
        pmc_min.generate(model, tok, PROMPTS, greedy=True, sampling=pmc_min.Sampling())


def test_the_question_answering_functions_that_moved_from_data_to_qa():
    from pmc_min import data
    for name in ("prompt", "target", "strip_tag", "encode_qa", "encode_rows"):
        with pytest.warns(DeprecationWarning, match=f"use pmc_min.qa.{name}"):
            assert getattr(data, name) is getattr(qa, name)
    with pytest.raises(AttributeError):
        data.no_such_name


def test_causal_lm_loss_with_total_divides_by_it():
    logits, labels = torch.randn(2, 5, 7), torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]])
    with pytest.warns(DeprecationWarning):
        by_total = pmc_min.causal_lm_loss(logits, labels, total=10)
    assert by_total.item() == pytest.approx(pmc_min.causal_lm_loss(logits, labels).item() * 6 / 10, rel=1e-6)
