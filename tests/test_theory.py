"""Property tests of the theory (paper Sec. 4; docs/method.md §4): exact identities with
Fractions and ==, Monte Carlo claims within stated confidence bounds."""

import sys
from fractions import Fraction
from itertools import product
from pathlib import Path

import numpy as np
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from theory import curated, lottery  # noqa: E402


def simplex(min_size=2, max_size=4, allow_zero=False):
    """A rational probability vector."""
    lo = 0 if allow_zero else 1
    return st.lists(st.integers(lo, 12), min_size=min_size, max_size=max_size).filter(lambda w: sum(w) > 0).map(
        lambda w: [Fraction(x, sum(w)) for x in w])


rewards = st.integers(0, 4).map(lambda r: Fraction(r, 4))


# --- the self-consuming lottery ------------------------------------------------

@given(simplex(max_size=3), st.integers(1, 5))
def test_lottery_mean_is_a_martingale(pi, n):
    assert lottery.expected_next(pi, n) == pi


@settings(max_examples=4)
@given(simplex(min_size=3, max_size=3), st.integers(0, 2**32 - 1))
def test_lottery_survivor_frequencies_match_pi0(pi, seed):
    chains = 1500
    freq = lottery.survivors(np.array(pi, dtype=float), 8, chains, np.random.default_rng(seed)) / chains
    p = np.array(pi, dtype=float)
    assert np.all(np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / chains) + 1e-12)  # 4.5 standard errors


# --- the retain-anchored lottery -------------------------------------------------

@given(simplex(min_size=4, max_size=4), st.lists(st.integers(0, 3), min_size=2, max_size=2).filter(any),
       st.integers(1, 4))
def test_anchored_forget_mass_decays_by_one_plus_alpha(pi, retain, n):
    counts = [0, 0, *retain]  # colours 0 and 1 are forget colours
    alpha = Fraction(sum(counts), n)
    e = lottery.expected_next(pi, n, counts)
    assert e[0] == pi[0] / (1 + alpha) and e[1] == pi[1] / (1 + alpha)
    assert e == lottery.mean_map(pi, [Fraction(c, sum(counts)) for c in counts], alpha)


@given(simplex(min_size=4, max_size=4), simplex(min_size=2, max_size=2), st.fractions(Fraction(1, 10), 3),
       st.integers(1, 25))
def test_anchored_closed_form_equals_iterated_map(p0, retain_share, alpha, t):
    pr = [Fraction(0), Fraction(0), *retain_share]
    p = p0
    for _ in range(t):
        p = lottery.mean_map(p, pr, alpha)
    assert p == lottery.mean_closed_form(p0, pr, alpha, t)


def test_anchored_monte_carlo_forget_mass_vanishes_and_retain_approaches_pr():
    rng = np.random.default_rng(0)
    retain = [0, 0, 30, 10]
    ends = np.stack([lottery.anchored_run([0.4, 0.3, 0.2, 0.1], 40, retain, 200, rng)[-1] for _ in range(200)])
    assert ends[:, :2].max() == 0  # absorbed at 0 in every chain
    se = ends[:, 2:].std(axis=0) / np.sqrt(len(ends))
    assert np.all(np.abs(ends[:, 2:].mean(axis=0) - [0.75, 0.25]) < 4 * se + 1e-3)


# --- curated self-consumption ------------------------------------------------------

def brute_force(p, select, k):
    """The selected sample's distribution by enumerating every ordered k-tuple of draws."""
    out = [Fraction(0)] * len(p)
    for draws in product(range(len(p)), repeat=k):
        prob = np.prod([p[i] for i in draws], dtype=object)
        for j, w in enumerate(select(draws)):
            out[draws[j]] += prob * w
    return out


@given(simplex(max_size=4, allow_zero=True), st.lists(rewards, min_size=4, max_size=4), st.integers(1, 4))
def test_best_of_k_equals_brute_force(p, reward, k):
    def select(draws):  # the best draw; ties uniformly among the tied draws
        top = max(reward[i] for i in draws)
        tied = [reward[i] == top for i in draws]
        return [Fraction(int(t), sum(tied)) for t in tied]
    assert curated.best_of_k_update(p, reward, k) == brute_force(p, select, k)


@given(simplex(max_size=3, allow_zero=True), st.lists(st.integers(1, 6).map(Fraction), min_size=3, max_size=3),
       st.integers(1, 4))
def test_bradley_terry_equals_brute_force(p, strength, k):
    def select(draws):
        total = sum(strength[i] for i in draws)
        return [strength[i] / total for i in draws]
    assert curated.bradley_terry_update(p, strength, k) == brute_force(p, select, k)


@given(simplex(max_size=4, allow_zero=True), st.lists(rewards, min_size=4, max_size=4), st.integers(1, 5),
       st.sampled_from([0, 1, 2, 3]))
def test_expected_reward_never_decreases_exact(p, reward, k, steepness):
    strength = [1 + steepness * r for r in reward]  # Bradley-Terry strengths increasing in the reward
    for nxt in (curated.best_of_k_update(p, reward, k), curated.bradley_terry_update(p, strength, k)):
        assert sum(nxt) == 1
        assert curated.mean(nxt, reward) >= curated.mean(p, reward)


@given(simplex(max_size=4), st.lists(st.floats(0, 1), min_size=4, max_size=4), st.integers(1, 5),
       st.floats(0.05, 5.0))
def test_expected_reward_never_decreases_float_tau(p, reward, k, tau):
    p = [float(x) for x in p][: len(reward)]
    reward = reward[: len(p)]
    nxt = curated.curated_update(p, reward, k, tau)
    assert curated.mean(nxt, reward) >= curated.mean(p, reward) - 1e-12


@given(simplex(max_size=4, allow_zero=True), st.lists(st.integers(1, 8).map(lambda s: Fraction(s, 2)), min_size=4,
                                                       max_size=4), st.integers(1, 5))
def test_ferbach_variance_bound_tau_1(p, strength, k):
    assert curated.ferbach_bound_gap(p, strength, k) >= 0


@settings(max_examples=30)
@given(simplex(min_size=2, max_size=5), st.lists(rewards, min_size=5, max_size=5), st.integers(2, 4),
       st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_variance_and_kl_to_top_level_go_to_zero(p0, reward, k, tau):
    reward = [float(r) for r in reward[: len(p0)]]
    p0 = [float(x) for x in p0]
    target = curated.top_level_target(p0, reward)
    p = np.array(p0)
    for _ in range(400):
        p = np.array(curated.curated_update(list(p), reward, k, tau))
        p /= p.sum()
        if curated.variance(p, reward) < 1e-10:
            break
    assert curated.variance(p, reward) < 1e-10
    assert curated.kl(target, p) < 1e-8


@given(simplex(min_size=2, max_size=5), st.lists(rewards, min_size=5, max_size=5), st.integers(1, 4))
def test_best_of_k_mass_off_the_top_level_is_raised_to_the_k(p, reward, k):
    reward = reward[: len(p)]
    top = max(reward)
    m = sum(pi for pi, r in zip(p, reward) if r != top)
    for _ in range(3):
        p = curated.best_of_k_update(p, reward, k)
        m = m ** k
        assert sum(pi for pi, r in zip(p, reward) if r != top) == m


@given(st.integers(2, 6), st.sampled_from([0.0, 0.5]))
def test_unlearning_original_answer_vanishes_iff_a_better_answer_has_mass(k, tau):
    p0, reward = curated.unlearning_case()
    assert reward[0] == 0 and min(reward[1:]) > 0  # y0 scores lowest against itself
    path = curated.iterate(p0, reward, k, tau, 300)
    assert path[-1][0] < 1e-6
    # When every answer with mass scores like y0, nothing moves.
    flat = curated.iterate([0.8, 0.2, 0, 0, 0], [0.0, 0.0, 0.5, 0.7, 1.0], k, tau, 50)
    assert np.allclose(flat[-1], [0.8, 0.2, 0, 0, 0], atol=1e-12)


@settings(max_examples=5)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 1.0]))
def test_finite_sample_step_is_unbiased(seed, tau):
    rng = np.random.default_rng(seed)
    p, reward, k, n, reps = [0.5, 0.3, 0.2], [0.0, 1.0, 1.0], 3, 100, 200
    exact = np.array(curated.curated_update(p, reward, k, tau))
    mc = np.mean([curated.sampled_step(p, reward, k, n, tau, rng) for _ in range(reps)], axis=0)
    assert np.all(np.abs(mc - exact) < 4.5 * np.sqrt(exact * (1 - exact) / (n * reps)) + 1e-12)


def test_python_m_theory_prints_every_claim_passing(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, "-m", "theory"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "11/11 claims hold" in out.stdout
