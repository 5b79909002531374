"""ROUGE-L and the Porter stemmer against rouge-score and nltk, with ==."""

import json

import pytest
from hypothesis import given, strategies as st
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer
from rouge_score.rouge_scorer import _lcs_table

from pmc_min.porter import stem
from pmc_min.rouge import lcs_length, rouge_l, rouge_l_batch, tokenize
from helpers import TOFU, needs_tofu

SCORERS = {s: rouge_scorer.RougeScorer(["rougeL"], use_stemmer=s) for s in (True, False)}
NLTK = PorterStemmer()


def reference(ref, cand, use_stem):
    s = SCORERS[use_stem].score(ref, cand)["rougeL"]
    return s.precision, s.recall, s.fmeasure


def tofu_rows():
    for path in sorted(TOFU.glob("*.json")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def tofu_pairs():
    for row in tofu_rows():
        if "paraphrased_answer" in row:
            yield row["answer"], row["paraphrased_answer"]
            for p in row.get("perturbed_answer", []):
                yield row["answer"], p
                yield p, row["paraphrased_answer"]


@needs_tofu
@pytest.mark.parametrize("use_stem", [True, False])
def test_equal_to_rouge_score_on_every_tofu_pair(use_stem):
    pairs = list(tofu_pairs())
    assert len(pairs) > 10_000
    ours = rouge_l_batch([r for r, _ in pairs], [c for _, c in pairs], stem=use_stem)
    for (ref, cand), got in zip(pairs, ours):
        assert got == reference(ref, cand, use_stem), (ref, cand)


@needs_tofu
def test_stemmer_equals_nltk_on_every_tofu_word():
    words = set()
    for row in tofu_rows():
        for value in row.values():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    words.update(text.split())
                    words.update(tokenize(text, stem=False))
    assert len(words) > 10_000
    for w in words:
        assert stem(w) == NLTK.stem(w), w


WORDS = ["the", "author", "authors", "born", "writes", "writing", "written", "happily", "generalization",
         "skies", "dying", "ties", "cried", "agreed", "hopping", "relational", "1991", "Taipei", "yyyy", "sky"]
TEXT = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=40).map(" ".join)


@given(TEXT, TEXT)
def test_equal_to_rouge_score_on_generated_text(ref, cand):
    for use_stem in (True, False):
        assert rouge_l(ref, cand, use_stem) == reference(ref, cand, use_stem)


@given(st.text(alphabet="abcdeilnosty", min_size=1, max_size=14))
def test_stemmer_equals_nltk_on_generated_words(word):
    assert stem(word) == NLTK.stem(word)


@given(st.lists(st.sampled_from("abcde"), max_size=60), st.lists(st.sampled_from("abcde"), max_size=60))
def test_bit_parallel_lcs_equals_the_dp_table(a, b):
    assert lcs_length(tuple(a), tuple(b)) == _lcs_table(a, b)[-1][-1]


def test_edge_cases():
    assert rouge_l("", "anything") == (0, 0, 0) == reference("", "anything", True)
    assert rouge_l("!!! ???", "a b") == reference("!!! ???", "a b", True)
    assert rouge_l("The cats sat.", "the cat sat") == (1.0, 1.0, 1.0)
    assert rouge_l("a b c d", "a c", stem=False) == (1.0, 0.5, 2 / 3)
