"""Each claim of the paper's theory (paper Sec. 4; docs/method.md §4), as one executable check.

`python -m theory` runs them all and prints a table; the property tests in
tests/test_theory.py check the same claims on hypothesis-generated cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import curated, lottery


@dataclass
class Result:
    claim: str
    check: str
    measured: str
    passed: bool


def random_simplex(rng: np.random.Generator, k: int, denominator: int = 60) -> list[Fraction]:
    """A random point of the probability simplex with rational coordinates."""
    cuts = sorted(rng.choice(np.arange(1, denominator), size=k - 1, replace=False))
    edges = [0, *cuts, denominator]
    return [Fraction(int(b - a), denominator) for a, b in zip(edges, edges[1:])]


def lottery_martingale(rng) -> Result:
    worst = max(max(abs(e - p) for e, p in zip(lottery.expected_next(pi, n), pi))
                for pi, n in ((random_simplex(rng, 3), int(rng.integers(1, 6))) for _ in range(20)))
    return Result("lottery: E[pi_{t+1} | pi_t] = pi_t", "exact, 20 random rational pi, N <= 5",
                  f"max |E - pi| = {worst}", worst == 0)


def lottery_survivor(rng) -> Result:
    pi0, chains = np.array([0.5, 0.3, 0.2]), 2000
    freq = lottery.survivors(pi0, n_draws=10, n_chains=chains, rng=rng) / chains
    bound = 4 * np.sqrt(pi0 * (1 - pi0) / chains)  # 4 standard errors
    return Result("lottery: colour i survives w.p. pi_0(i)", f"{chains} chains, |freq - pi_0| < 4 s.e.",
                  f"freq {np.round(freq, 3).tolist()} vs {pi0.tolist()}", bool(np.all(np.abs(freq - pi0) < bound)))


def anchored_decay(rng) -> Result:
    ok, cases = True, 0
    for _ in range(20):
        pi = random_simplex(rng, 4)
        retain = [0, 0, int(rng.integers(1, 4)), int(rng.integers(0, 4))]  # colours 0, 1 are forget colours
        n = int(rng.integers(1, 5))
        alpha = Fraction(sum(retain), n)
        e = lottery.expected_next(pi, n, retain)
        ok &= e[0] == pi[0] / (1 + alpha) and e[1] == pi[1] / (1 + alpha)
        cases += 1
    return Result("anchored: E[pi_{t+1}(i)] = pi_t(i)/(1+alpha), forget i", f"exact, {cases} random cases",
                  "equal" if ok else "differs", ok)


def anchored_closed_form(rng) -> Result:
    p0, pr, alpha = random_simplex(rng, 4), [Fraction(0), Fraction(0), Fraction(2, 3), Fraction(1, 3)], Fraction(1, 4)
    p, ok = p0, True
    for t in range(1, 31):
        p = lottery.mean_map(p, pr, alpha)
        ok &= p == lottery.mean_closed_form(p0, pr, alpha, t)
    return Result("anchored: closed form = iterated mean map", "exact, t = 1..30", "equal" if ok else "differs", ok)


def anchored_monte_carlo(rng) -> Result:
    pi0, retain, steps, chains = [0.4, 0.3, 0.2, 0.1], [0, 0, 30, 10], 200, 200
    ends = np.stack([lottery.anchored_run(pi0, 40, retain, steps, rng)[-1] for _ in range(chains)])
    forget = ends[:, :2].sum(axis=1).max()
    shares = ends[:, 2:].mean(axis=0)
    pr = np.array(retain[2:]) / sum(retain)
    ok = forget == 0 and np.all(np.abs(shares - pr) < 0.02)
    return Result("anchored: forget mass -> 0, retain -> p_r", f"{chains} chains x {steps} steps, N=40, alpha=1",
                  f"max forget mass {forget:.3g}; retain {np.round(shares, 3).tolist()} vs {pr.tolist()}", bool(ok))


def reward_monotone(rng) -> Result:
    worst = None
    for _ in range(30):
        p = random_simplex(rng, 4)
        reward = [Fraction(int(rng.integers(0, 5)), 4) for _ in p]
        k = int(rng.integers(1, 5))
        for nxt in (curated.best_of_k_update(p, reward, k),
                    curated.bradley_terry_update(p, [1 + 3 * r for r in reward], k)):  # strength increasing in r
            gain = curated.mean(nxt, reward) - curated.mean(p, reward)
            worst = gain if worst is None else min(worst, gain)
    return Result("curated: E_t[r] never decreases", "exact, 30 cases x {best-of-k, BT}", f"min gain = {worst}",
                  worst >= 0)


def ferbach_bound(rng) -> Result:
    worst = None
    for _ in range(30):
        p = random_simplex(rng, 4)
        strength = [Fraction(int(rng.integers(1, 9)), 2) for _ in p]  # e^r, rational
        gap = curated.ferbach_bound_gap(p, strength, int(rng.integers(2, 5)))
        worst = gap if worst is None else min(worst, gap)
    return Result("curated: Ferbach et al. bound (tau = 1)",
                  "exact, E_{t+1}[e^r] - E_t[e^r] - (K-1)/K Var/e^r* >= 0", f"min gap = {float(worst):.4g}", worst >= 0)


def convergence(rng) -> Result:
    p0, reward = [0.1, 0.3, 0.2, 0.25, 0.15], [0.0, 0.4, 1.0, 0.4, 1.0]
    target = curated.top_level_target(p0, reward)
    rows = []
    ok = True
    for tau in (0.0, 0.5):
        path = curated.iterate(p0, reward, k=3, tau=tau, steps=60)
        var, kl = curated.variance(path[-1], reward), curated.kl(target, path[-1])
        rows.append(f"tau={tau}: Var={var:.1e} KL={kl:.1e}")
        ok &= var < 1e-6 and kl < 1e-6
    return Result("curated: Var_t[r] -> 0 and KL(p*||p_t) -> 0", "60 steps, k=3", "; ".join(rows), bool(ok))


def top_mass_power() -> Result:
    p, reward, k = [Fraction(1, 5), Fraction(3, 10), Fraction(1, 2)], [0, 1, 2], 3
    m, ok = Fraction(1, 2), True
    for _ in range(5):
        p = curated.best_of_k_update(p, reward, k)
        m = m ** k
        ok &= p[0] + p[1] == m
    return Result("curated tau=0: m_{t+1} = m_t^k", "exact, 5 steps, k=3", f"m_5 = {float(m):.3g}", ok)


def unlearning_corollary() -> Result:
    p0, reward = curated.unlearning_case()
    path = curated.iterate(p0, reward, k=5, tau=0.0, steps=10)
    same = curated.iterate(p0, [0.0] * len(p0), k=5, tau=0.0, steps=10)  # no answer better than y0
    ok = path[-1][0] < 1e-9 and abs(same[-1][0] - p0[0]) < 1e-12
    return Result("unlearning: p_t(y0) -> 0 iff a better answer has mass", "k=5, 10 steps",
                  f"p_10(y0) = {path[-1][0]:.2e} (from {p0[0]}); all rewards equal: {same[-1][0]:.2f}", bool(ok))


def sampled_matches_exact(rng) -> Result:
    p, reward, k, n, reps = [0.5, 0.3, 0.2], [0.0, 1.0, 2.0], 3, 200, 200
    worst = 0.0
    for tau in (0.0, 1.0):
        exact = np.array(curated.curated_update(p, reward, k, tau))
        mc = np.mean([curated.sampled_step(p, reward, k, n, tau, rng) for _ in range(reps)], axis=0)
        se = np.sqrt(exact * (1 - exact) / (n * reps))
        worst = max(worst, float(np.max(np.abs(mc - exact) / np.maximum(se, 1e-12))))
    return Result("curated: finite-sample step is unbiased", f"{reps} x N={n}, tau in {{0, 1}}",
                  f"max |mean - exact| = {worst:.2f} s.e.", worst < 4)


def run_all(seed: int = 0) -> list[Result]:
    rng = np.random.default_rng(seed)
    return [lottery_martingale(rng), lottery_survivor(rng), anchored_decay(rng), anchored_closed_form(rng),
            anchored_monte_carlo(rng), reward_monotone(rng), ferbach_bound(rng), convergence(rng), top_mass_power(),
            unlearning_corollary(), sampled_matches_exact(rng)]


__all__ = ["Result", "run_all"]
