"""Model collapse as a lottery, and partial collapse as an anchored one.

A categorical model pi over K colours is refitted, generation after
generation, to N balls drawn from itself (the "self-consuming lottery").
The mean is a martingale, E[pi_{t+1} | pi_t] = pi_t, the chain is absorbed
at a single colour, and colour i survives with probability pi_0(i): that is
model collapse.

Adding fixed retain counts c (total C, alpha = C / N) to the drawn balls
before refitting anchors the retain colours: a forget colour i (c_i = 0)
has E[pi_{t+1}(i)] = pi_t(i) / (1 + alpha), decays geometrically and is
absorbed at 0, while the idealised mean dynamics are
p_t = (1 - (1+alpha)^-t) p_r + (1+alpha)^-t p_0 with p_r = c / C: the
paper's categorical warm-up for *partial* collapse.

Exact functions accept fractions.Fraction and return Fractions, so the
identities are checked with ==.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations
from math import factorial, prod

import numpy as np


def compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative ints summing to `total` (stars and bars)."""
    for bars in combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


def multinomial_pmf(counts: tuple[int, ...], p) -> Fraction:
    """P(counts) for sum(counts) draws from p; exact for Fraction p."""
    coefficient = factorial(sum(counts)) // prod(factorial(c) for c in counts)
    return coefficient * prod((pi ** c for pi, c in zip(p, counts)), start=Fraction(1))


def refit(counts, retain_counts) -> list:
    """The refitted model: drawn counts plus the fixed retain counts, normalised."""
    total = sum(counts) + sum(retain_counts)
    return [Fraction(c + r, total) for c, r in zip(counts, retain_counts)]


def expected_next(pi, n_draws: int, retain_counts=None) -> list[Fraction]:
    """E[pi_{t+1} | pi_t = pi], exactly, by summing over every multinomial outcome."""
    retain_counts = retain_counts or [0] * len(pi)
    expectation = [Fraction(0)] * len(pi)
    for counts in compositions(n_draws, len(pi)):
        weight = multinomial_pmf(counts, pi)
        if weight:
            expectation = [e + weight * q for e, q in zip(expectation, refit(counts, retain_counts))]
    return expectation


def mean_map(p, p_retain, alpha):
    """One step of the idealised mean dynamics: (p + alpha p_r) / (1 + alpha)."""
    return [(pi + alpha * ri) / (1 + alpha) for pi, ri in zip(p, p_retain)]


def mean_closed_form(p0, p_retain, alpha, t: int):
    """p_t = (1 - (1+alpha)^-t) p_r + (1+alpha)^-t p_0."""
    decay = (1 + alpha) ** -t
    return [(1 - decay) * ri + decay * pi for pi, ri in zip(p0, p_retain)]


# Finite-sample (Monte Carlo) processes, numpy.

def lottery_step(pi: np.ndarray, n_draws: int, rng: np.random.Generator, retain_counts=None) -> np.ndarray:
    """Draw n_draws balls from pi, add the retain counts, refit by counts."""
    counts = rng.multinomial(n_draws, pi).astype(float)
    if retain_counts is not None:
        counts += retain_counts
    return counts / counts.sum()


def survivors(pi0, n_draws: int, n_chains: int, rng: np.random.Generator, max_steps: int = 100_000) -> np.ndarray:
    """How often each colour is the one left when the self-consuming lottery collapses."""
    won = np.zeros(len(pi0), dtype=int)
    for _ in range(n_chains):
        pi = np.asarray(pi0, dtype=float)
        for _ in range(max_steps):
            if pi.max() == 1.0:
                break
            pi = lottery_step(pi, n_draws, rng)
        else:
            raise RuntimeError(f"no collapse within {max_steps} steps")
        won[pi.argmax()] += 1
    return won


def anchored_run(pi0, n_draws: int, retain_counts, steps: int, rng: np.random.Generator) -> np.ndarray:
    """pi_0 .. pi_steps of the retain-anchored lottery, shape (steps + 1, K)."""
    path = [np.asarray(pi0, dtype=float)]
    for _ in range(steps):
        path.append(lottery_step(path[-1], n_draws, rng, np.asarray(retain_counts, dtype=float)))
    return np.stack(path)
