"""A held-out judge of another model family reads the forget answers of saved runs: each
answer's NLL per token under Gemma-3-270M (a base model, prompted "Question: q\\nAnswer: a"),
and how many of a run's answers after unlearning are less likely than every one of the
fine-tuned model's own answers before it (the criterion the fluent-reward issue states for
"non-language"). Reads only results.json files.

    python tests/benchmarks/judge.py --data-dir tofu runs/smollm2-pmc runs/smollm2-pmc-fluent
"""

import argparse
import json
from pathlib import Path

import pmc_min
from pmc_min.data import load_split, resolve_data_dir
from pmc_min.qa import score_answers

parser = argparse.ArgumentParser()
parser.add_argument("runs", nargs="+", help="run folders (their results.json)")
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--judge", default="gemma-3-270m")
parser.add_argument("--split", default="forget01")
args = parser.parse_args()

judge, tok = pmc_min.load(pmc_min.checkpoint.resolve(args.judge))
questions = [r["question"] for r in load_split(resolve_data_dir(args.data_dir), args.split)]


def per_token(answers: list[str]) -> list[float]:
    total, count = score_answers(judge, tok, questions[:len(answers)], answers, 256)
    return (total / count).tolist()


print(f"judge: {args.judge}; NLL per token of each forget answer; 'off': less likely than every answer before")
print("| run | before: median / max | after: median / max | after, off |")
print("|---|---|---|---|")
for run in args.runs:
    results = json.loads((Path(run) / "results.json").read_text())
    before, after = (per_token(results[w]["answers"]["forget"]) for w in ("before", "after"))
    off = sum(x > max(before) for x in after)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"| {run} | {median(before):.2f} / {max(before):.2f} | {median(after):.2f} / {max(after):.2f} | "
          f"{off} of {len(after)} ({off / len(after):.0%}) |", flush=True)
