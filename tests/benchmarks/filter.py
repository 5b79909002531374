"""Does filter_logits' top-k-limited sort pay for its tie arithmetic? Times it against the
plain full-vocabulary sort (llama's sample_top_p shape, HF's TopPLogitsWarper rule) on
PMC's draw: 80 rows (16 questions x n = 5), T 1.25, top-p 0.95, top-k 50.

    python tests/benchmarks/filter.py [--vocab 51200] [--rows 80]
"""

import argparse
import time

import torch

from pmc_min.sample import Sampling, filter_logits


def full_sort(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, s.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    ascending, index = torch.sort(logits)
    drop = ascending.softmax(-1).cumsum(-1) <= 1 - s.top_p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, index, drop), float("-inf"))


def best_of(f, reps: int = 50) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


parser = argparse.ArgumentParser()
parser.add_argument("--vocab", type=int, default=51200)
parser.add_argument("--rows", type=int, default=80)
args = parser.parse_args()
s = Sampling(1.25, 0.95, 50)
logits = torch.randn(args.rows, args.vocab, generator=torch.Generator().manual_seed(0)) * 3
assert torch.equal(filter_logits(logits, s), full_sort(logits, s))  # the same tokens kept (no ties here)
ours, plain = best_of(lambda: filter_logits(logits, s)), best_of(lambda: full_sort(logits, s))
print(f"filter_logits (top-k sort): {ours * 1e3:.2f} ms; full sort: {plain * 1e3:.2f} ms; ratio {plain / ours:.1f}x")
