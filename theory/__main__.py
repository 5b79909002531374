"""python -m theory [--plot out.png] [--seed 0]: check every claim, print a table."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import curated, lottery
from .claims import run_all


def plot(out: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: --plot needs matplotlib: pip install -e '.[plot]'")
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    steps = np.arange(31)

    # Anchored lottery: forget mass vs (1 + alpha)^-t.
    rng = np.random.default_rng(0)
    pi0, retain, n = [0.4, 0.3, 0.2, 0.1], [0, 0, 30, 10], 40
    runs = np.stack([lottery.anchored_run(pi0, n, retain, 30, rng)[:, :2].sum(1) for _ in range(200)])
    alpha = sum(retain) / n
    ax[0, 0].plot(steps, runs.mean(0), label="Monte Carlo mean (200 chains)")
    ax[0, 0].plot(steps, 0.7 * (1 + alpha) ** -steps, "--", label="0.7 (1+alpha)^-t")
    ax[0, 0].set(title="retain-anchored lottery: forget mass", xlabel="t", yscale="log")

    # Curated, tau = 0: mass off the top level vs m0^(k^t).
    p0, reward, k = [0.3, 0.3, 0.4], [0.0, 0.5, 1.0], 2
    path = curated.iterate(p0, reward, k, 0.0, 6)
    ax[0, 1].plot(path[:, :2].sum(1), "o-", label="exact update")
    ax[0, 1].plot(0.6 ** (k ** np.arange(7.0)), "--", label="m0^(k^t)")
    ax[0, 1].set(title="best-of-k: mass off the top level", xlabel="t", yscale="log")

    # Expected reward and its variance, tau in {0, 1}.
    p0, reward = [0.1, 0.3, 0.2, 0.25, 0.15], [0.0, 0.4, 1.0, 0.4, 1.0]
    for tau in (0.0, 1.0):
        path = curated.iterate(p0, reward, 3, tau, 25)
        ax[1, 0].plot([curated.mean(p, reward) for p in path], label=f"E[r], tau={tau}")
        ax[1, 0].plot([curated.variance(p, reward) for p in path], ":", label=f"Var[r], tau={tau}")
    ax[1, 0].set(title="curated self-consumption: reward", xlabel="t")

    # LLM-style: reward = 1 - recall(y0, x); y0's probability collapses.
    p0, reward = curated.unlearning_case()
    path = curated.iterate(p0, reward, 5, 0.0, 8)
    for i, answer in enumerate(curated.ANSWERS):
        ax[1, 1].plot(path[:, i], label=f"r={reward[i]:.2f}: {answer[:30]}")
    ax[1, 1].set(title="unlearning: answers to one question (k=5)", xlabel="t")
    for a in ax.flat:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plot", metavar="PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    results = run_all(args.seed)
    width = max(len(r.claim) for r in results)
    print(f"{'claim':<{width}}  {'result':<6}  check  ->  measured")
    for r in results:
        print(f"{r.claim:<{width}}  {'PASS' if r.passed else 'FAIL':<6}  {r.check}  ->  {r.measured}")
    print(f"{sum(r.passed for r in results)}/{len(results)} claims hold ({time.perf_counter() - start:.1f} s)")
    if args.plot:
        plot(args.plot)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
