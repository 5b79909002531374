"""The counter-based streams against a plain SplitMix64 generator (Python integers,
run step by step) and against the uniform distribution (scipy)."""

import numpy as np
from hypothesis import given, strategies as st
from scipy import stats

from pmc_min.rng import output, seed_of, uniforms

M = (1 << 64) - 1


class SplitMix64:
    """Vigna's splitmix64.c, one output per call."""

    def __init__(self, seed: int):
        self.x = seed & M

    def next(self) -> int:
        self.x = (self.x + 0x9E3779B97F4A7C15) & M
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)


@given(seed=st.integers(0, M), k=st.integers(1, 50))
def test_the_kth_output_is_the_generators(seed, k):
    g = SplitMix64(seed)
    for _ in range(k):
        want = g.next()
    assert int(output(np.uint64(seed), k)) == want


def test_vigna_reference_values():
    # The first outputs of splitmix64.c seeded with 1234567, as published with it.
    g = SplitMix64(1234567)
    assert [g.next() for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert [int(output(np.uint64(1234567), k)) for k in (1, 2, 3)] == [6457827717110365317, 3203168211198807973,
                                                                        9817491932198370423]


@given(seeds=st.lists(st.integers(0, M), min_size=1, max_size=4), n=st.integers(1, 4), steps=st.integers(1, 6))
def test_row_streams_follow_the_definition(seeds, n, steps):
    u = uniforms(seeds, n, steps)
    assert u.shape == (len(seeds) * n, steps) and u.dtype == np.float32
    for i, s in enumerate(seeds):
        keys = SplitMix64(s)
        for j in range(n):
            row = SplitMix64(keys.next())
            assert [float(x) for x in u[i * n + j]] == [(row.next() >> 40) / 2 ** 24 for _ in range(steps)]


def test_uniforms_are_uniform_and_rows_unrelated():
    u = uniforms([seed_of(0, q) for q in range(200)], 5, 100).astype(np.float64)
    assert 0 <= u.min() and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    # consecutive rows (samples of one prompt, and across prompts) and steps are uncorrelated
    assert stats.pearsonr(u[:-1].ravel(), u[1:].ravel()).pvalue > 1e-3
    assert stats.pearsonr(u[:, :-1].ravel(), u[:, 1:].ravel()).pvalue > 1e-3


def test_seed_of_separates_its_parts():
    seeds = {seed_of(s, e, q) for s in range(3) for e in range(1, 41) for q in range(100)}
    assert len(seeds) == 3 * 40 * 100
    assert seed_of(1, 23) != seed_of(12, 3) and seed_of(0, 1) != seed_of(1, 0)
