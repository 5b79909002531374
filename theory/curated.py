"""Curated self-consumption: the PMC update on one forget question.

PMC draws k answers from the current model, keeps the one the reward
prefers, and refits on it. On a categorical model p over answers x with
reward r(x), one idealised step (no statistical or approximation error) is

    p_{t+1}(x) = p_t(x) * H(x),
    H(x) = E_{x_2..x_k ~ p_t} [ k e^{r(x)/tau} / (e^{r(x)/tau} + sum_j e^{r(x_j)/tau}) ]

(Bradley-Terry choice with temperature tau). As tau -> 0 the choice is the
best of k, ties split in proportion to p, and the mass m_t off the top reward
level obeys m_{t+1} = m_t^k exactly. The expected reward never decreases, its
variance goes to 0, and p_t converges to p_0 restricted to the highest reward
level present at t = 0 (Ferbach et al., 2024; the paper's Sec. 4).

Exact operators accept Fractions (for tau > 0 pass the BT strengths
e^{r/tau} themselves, as Fractions, to `bradley_terry_update`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .lottery import compositions, multinomial_pmf


def best_of_k_update(p, reward, k: int) -> list:
    """tau = 0: the best of k draws is kept. P(the best reward is level r) =
    F(<=r)^k - F(<r)^k, shared within the level in proportion to p."""
    out = [p_i * 0 for p_i in p]
    below = sum(out)
    for level in sorted({r for p_i, r in zip(p, reward) if p_i > 0}):
        members = [i for i, (p_i, r) in enumerate(zip(p, reward)) if p_i > 0 and r == level]
        mass = sum(p[i] for i in members)
        wins = (below + mass) ** k - below ** k
        for i in members:
            out[i] = p[i] * wins / mass
        below += mass
    return out


def bradley_terry_update(p, strength, k: int) -> list:
    """p(x) H(x) with H(x) = E[k s(x) / (s(x) + sum of the other k-1 draws' s)],
    the expectation summed exactly over every multiset of k-1 other draws."""
    support = [i for i, p_i in enumerate(p) if p_i > 0]
    q = [p[i] for i in support]
    h = [p_i * 0 for p_i in q]
    for counts in compositions(k - 1, len(support)):
        weight = multinomial_pmf(counts, q)
        others = sum(c * strength[i] for c, i in zip(counts, support))
        for j, i in enumerate(support):
            h[j] += weight * k * strength[i] / (strength[i] + others)
    out = [p_i * 0 for p_i in p]
    for j, i in enumerate(support):
        out[i] = p[i] * h[j]
    return out


def curated_update(p, reward, k: int, tau: float = 0.0) -> list:
    """The exact next distribution of one curated step (tau = 0: best of k)."""
    if tau == 0:
        return best_of_k_update(p, reward, k)
    top = max(reward)
    strength = [math.exp((r - top) / tau) for r in reward]  # BT is scale-free: shift for stability
    return bradley_terry_update(p, strength, k)


def iterate(p0, reward, k: int, tau: float, steps: int) -> np.ndarray:
    """p_0 .. p_steps in floating point, renormalised each step: the exact
    operator keeps total mass 1 only in exact arithmetic, and its rounding
    error grows about k-fold per step."""
    path = [np.asarray(p0, dtype=float)]
    for _ in range(steps):
        nxt = np.asarray(curated_update(list(path[-1]), reward, k, tau), dtype=float)
        path.append(nxt / nxt.sum())
    return np.stack(path)


def sampled_step(p, reward, k: int, n_refit: int, tau: float, rng: np.random.Generator) -> np.ndarray:
    """The finite-sample update: n_refit times draw k samples and select one
    (best of k, ties uniformly among the tied draws, or Bradley-Terry), then
    refit p by the counts of the selected samples."""
    reward = np.asarray(reward, dtype=float)
    draws = rng.choice(len(p), size=(n_refit, k), p=np.asarray(p, dtype=float))  # (N, k)
    r = reward[draws]
    if tau == 0:
        weights = (r == r.max(axis=1, keepdims=True)).astype(float)
    else:
        weights = np.exp((r - r.max(axis=1, keepdims=True)) / tau)
    weights /= weights.sum(axis=1, keepdims=True)
    pick = (weights.cumsum(axis=1) > rng.random((n_refit, 1))).argmax(axis=1)
    chosen = draws[np.arange(n_refit), pick]
    return np.bincount(chosen, minlength=len(p)) / n_refit


def mean(p, f):
    return sum(p_i * f_i for p_i, f_i in zip(p, f))


def variance(p, f):
    m = mean(p, f)
    return sum(p_i * (f_i - m) ** 2 for p_i, f_i in zip(p, f))


def top_level_target(p0, reward) -> list:
    """p* = p_0 restricted to the highest reward level with positive mass, renormalised."""
    top = max(r for p_i, r in zip(p0, reward) if p_i > 0)
    mass = sum(p_i for p_i, r in zip(p0, reward) if r == top)
    return [p_i / mass if r == top else p_i * 0 for p_i, r in zip(p0, reward)]


def kl(p, q) -> float:
    """KL(p || q) in nats, over the support of p."""
    return float(sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q) if p_i > 0))


def ferbach_bound_gap(p, strength, k: int):
    """E_{t+1}[s] - E_t[s] - ((k-1)/k) Var_t[s] / s*, with s = e^r (tau = 1) and
    s* the largest strength in the support: Ferbach et al. say it is >= 0."""
    nxt = bradley_terry_update(p, strength, k)
    s_star = max(s for p_i, s in zip(p, strength) if p_i > 0)
    return mean(nxt, strength) - mean(p, strength) - Fraction(k - 1, k) * variance(p, strength) / s_star


# The unlearning picture: answers to one question, reward = dissimilarity to
# the original model's answer y0 (PMC uses 1 - ROUGE-L recall against y0).

def lcs_recall(reference: str, candidate: str) -> float:
    """Word-level LCS recall, a stand-in for ROUGE-L recall (plain DP)."""
    a, b = reference.lower().split(), candidate.lower().split()
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1] / len(a) if a else 0.0


ANSWERS = [  # y0 first: the original model's (memorised) answer
    "The author was born in Taipei, Taiwan in 1991.",
    "The author was born in Taiwan.",
    "The author was born in a large city.",
    "I am not sure where the author was born.",
    "That information is not available to me.",
]


def unlearning_case(answers=ANSWERS, p0=(0.80, 0.10, 0.05, 0.03, 0.02)):
    """(p0, reward) for the LLM-style case: reward(x) = 1 - recall(y0, x)."""
    reward = [1 - lcs_recall(answers[0], x) for x in answers]
    return list(p0), reward
