"""The next-token NLL, forward and backward: pmc_min's row-major reading of the logits
(`model.next_token_nll`) against cross-entropy over the transposed (B, V, T) layout that it
replaced, with each one's largest error against a float64 reference.

    python tests/benchmarks/cross_entropy.py [--vocab 49152] [--batch 8] [--length 160]
"""

import argparse
import time

import torch
import torch.nn.functional as F

from pmc_min.model import next_token_nll

parser = argparse.ArgumentParser()
parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 49152, 262144])
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--length", type=int, default=160)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()


def transposed(logits, labels):
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                           reduction="none")


def row_major(logits, labels):
    return next_token_nll(logits, labels)[0]


def best_time(fn) -> float:
    fn()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


torch.manual_seed(0)
print(f"batch {args.batch} x {args.length} tokens, {torch.get_num_threads()} threads, best of {args.repeats}")
for V in args.vocab:
    logits = (torch.randn(args.batch, args.length, V) * 3).requires_grad_()
    labels = torch.randint(0, V, (args.batch, args.length))
    labels[:, :args.length // 4] = -100  # the prompt
    exact = F.cross_entropy(logits[:, :-1].detach().double().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                            reduction="none")
    errors = [f(logits, labels).detach().double().sub(exact).abs().max() for f in (transposed, row_major)]
    old = best_time(lambda: transposed(logits, labels).sum().backward())
    new = best_time(lambda: row_major(logits, labels).sum().backward())
    print(f"vocabulary {V:>7,}: forward + backward {old:.3f} s transposed, {new:.3f} s row-major ({old / new:.2f}x); "
          f"largest error {errors[0]:.1e} against {errors[1]:.1e}")
