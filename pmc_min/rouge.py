"""ROUGE-L, identical to rouge-score's `RougeScorer(['rougeL'])`, and fast.

PMC's reward is `1 - ROUGE-L recall(reference=y0, candidate=sample)`
(paper Sec. 3; docs/method.md §2, step 3) and every evaluation number is ROUGE-L recall
against the ground truth (docs/method.md §3), so the numbers must be rouge-score's
to the last digit. Two things make this fast: stems are memoised, and the
LCS length is computed bit-parallel (Hyyrö 2004) on Python integers, one
big-integer add per candidate token instead of a row of the DP table.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from .porter import stem as porter_stem

NON_ALPHANUM = re.compile(r"[^a-z0-9]+")


class _StemMemo(dict):
    """token -> the token rouge-score compares: Porter-stemmed when longer than
    3 characters. A dict whose misses compute the stem, so a hit costs one
    C-level lookup."""

    def __missing__(self, token: str) -> str:
        self[token] = value = porter_stem(token) if len(token) > 3 else token
        return value


STEMS = _StemMemo()


@lru_cache(maxsize=1 << 16)
def tokenize(text: str, stem: bool = True) -> tuple[str, ...]:
    """rouge-score's default tokenizer: lowercase, runs of characters outside
    [a-z0-9] become spaces, split, Porter-stem tokens longer than 3 chars."""
    tokens = NON_ALPHANUM.sub(" ", text.lower()).split()
    out = tuple(map(STEMS.__getitem__, tokens)) if stem else tuple(tokens)
    return tuple(t for t in out if t) if "" in out else out  # rouge-score drops empty tokens


@lru_cache(maxsize=1 << 12)
def match_masks(ref: tuple[str, ...]) -> dict[str, int]:
    """token -> bit mask of its positions in ref (memoised: PMC scores n samples against one y0)."""
    masks: dict[str, int] = {}
    for j, token in enumerate(ref):
        masks[token] = masks.get(token, 0) | (1 << j)
    return masks


def lcs_length(ref: tuple[str, ...], cand: tuple[str, ...]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit j of `row` is set while ref[j] is still unmatched; each candidate
    token updates the whole row at once (Hyyrö's bit-vector recurrence)."""
    masks = match_masks(ref)
    full = (1 << len(ref)) - 1
    row = full
    for token in cand:
        match = row & masks.get(token, 0)
        row = ((row + match) | (row - match)) & full
    return len(ref) - row.bit_count()


def fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def score_tokens(ref: tuple[str, ...], cand: tuple[str, ...]) -> tuple[float, float, float]:
    if not ref or not cand:
        return 0, 0, 0
    lcs = lcs_length(ref, cand)
    precision, recall = lcs / len(cand), lcs / len(ref)
    return precision, recall, fmeasure(precision, recall)


def rouge_l(reference: str, candidate: str, stem: bool = True) -> tuple[float, float, float]:
    """(precision, recall, fmeasure) of ROUGE-L, with rouge-score's semantics."""
    return score_tokens(tokenize(reference, stem), tokenize(candidate, stem))


def rouge_l_batch(references: list[str], candidates: list[str], stem: bool = True) -> list[tuple[float, float, float]]:
    """rouge_l over many (reference, candidate) pairs."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates.")
    return [rouge_l(r, c, stem) for r, c in zip(references, candidates)]


def rouge_l_recall(reference: str, candidate: str, stem: bool = True) -> float:
    return rouge_l(reference, candidate, stem)[1]


def rouge_1_recall(reference: str, candidate: str, stem: bool = True) -> float:
    """ROUGE-1 recall as rouge-score's `RougeScorer(['rouge1'])`: the reference's tokens that the
    candidate has too, each counted as often as both have it, over the reference's tokens."""
    ref, cand = Counter(tokenize(reference, stem)), Counter(tokenize(candidate, stem))
    return sum((ref & cand).values()) / max(sum(ref.values()), 1)
