"""Pairs/s of pmc_min's ROUGE-L and rouge-score's on every forget10_perturbed
(answer, perturbed answer) pair, stemming on; checks the scores are identical.

    python tests/benchmarks/rouge.py [--data-dir tofu]
"""

import argparse
import time

from rouge_score import rouge_scorer

from pmc_min import porter, rouge
from pmc_min.data import load_split, resolve_data_dir

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

rows = load_split(resolve_data_dir(args.data_dir), "forget10_perturbed")
pairs = [(r["answer"], p) for r in rows for p in r["perturbed_answer"]]


def best_of(fn):
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def theirs():
    return [tuple(scorer.score(r, c)["rougeL"]) for r, c in pairs]


def ours_cold():  # empty caches: every stem and tokenisation computed afresh
    rouge.tokenize.cache_clear()
    porter.stem.cache_clear()
    rouge.STEMS.clear()
    rouge.match_masks.cache_clear()
    return rouge.rouge_l_batch([r for r, _ in pairs], [c for _, c in pairs])


def ours_warm():  # caches as they are after a first pass (PMC rescores the same y0 every epoch)
    return rouge.rouge_l_batch([r for r, _ in pairs], [c for _, c in pairs])


ref, t_ref = best_of(theirs)
cold, t_cold = best_of(ours_cold)
warm, t_warm = best_of(ours_warm)
assert cold == ref and warm == ref, "scores differ from rouge-score"
n = len(pairs)
print(f"{n} pairs, identical scores: True")
print(f"rouge-score:          {n / t_ref:12,.0f} pairs/s")
print(f"pmc_min (cold cache): {n / t_cold:12,.0f} pairs/s   ratio {t_ref / t_cold:6.1f}x")
print(f"pmc_min (warm cache): {n / t_warm:12,.0f} pairs/s   ratio {t_ref / t_warm:6.1f}x")
