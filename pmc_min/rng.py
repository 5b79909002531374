"""Counter-based random numbers: every sampled answer has its own stream.

A draw must not depend on which batch, process or GPU makes it: a forget
question's n samples in epoch t are the same whether one process samples all
questions or each of 8 ranks samples an eighth, and whichever others share its
batch. So there is no shared generator whose state advances draw by draw.
Instead a prompt gets a seed from what identifies it (PMC: the run seed, the
epoch and the question's index, `seed_of`), its j-th sample row a key from
that seed, and the uniform the row's token t is drawn with is a pure function
of (key, t).

The function is SplitMix64 (Steele, Lea and Flood 2014; Vigna's `splitmix64.c`):
the k-th output of a generator seeded with s is mix(s + k * GOLDEN), so any
output is computed directly, without running the generator up to it. Row j's
key is output j + 1 of the generator seeded with the prompt's seed, and the
uniform of its token t is output t + 1 of the generator seeded with that key,
its top 24 bits scaled to [0, 1) (a float32 holds them exactly). numpy's uint64
arithmetic wraps modulo 2^64, as the algorithm needs; a batch's uniforms are
computed at once on the host and sent to the device in one copy.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / the golden ratio, SplitMix64's increment
MASK = (1 << 64) - 1


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (Stafford's Mix13 variant)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def output(seed: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The k-th output (k >= 1) of SplitMix64 seeded with seed, elementwise."""
    with np.errstate(over="ignore"):
        return mix(np.asarray(seed, dtype=np.uint64) + np.asarray(k, dtype=np.uint64) * np.uint64(GOLDEN))


def seed_of(*parts: int) -> int:
    """One 64-bit seed from integers that identify a draw, e.g. (run seed, epoch, question):
    distinct tuples give unrelated seeds."""
    s = 0
    for p in parts:
        s = int(output(np.uint64(s ^ (p & MASK)), 1))
    return s


def uniforms(seeds: list[int], n: int, steps: int) -> np.ndarray:
    """(len(seeds) * n, steps) float32 uniforms in [0, 1): row i * n + j is prompt i's
    sample j, column t the uniform of its token t."""
    s = np.array([x & MASK for x in seeds], dtype=np.uint64)
    keys = output(s[:, None], np.arange(1, n + 1, dtype=np.uint64)[None, :]).reshape(-1, 1)
    bits = output(keys, np.arange(1, steps + 1, dtype=np.uint64)[None, :]) >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(2.0 ** -24)
