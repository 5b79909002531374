"""What --reward fluent's judge saves by scoring each distinct (question, answer) once, and
what that changes: n draws for each of the first forget01 questions from a saved model, with
`--protocol slice`'s instruct settings (T 0.9, top-p 0.95, top-k 50, max length 160, epoch 1's
seeds), scored by `pmc.FluencyScorer` (distinct pairs only) and by `qa.score_answers` over
every draw in the run's batches (what the judge did before). Prints the draws, the distinct pairs and the largest
difference between the two scores, in nats a token.

    python tests/benchmarks/fluency_judge.py MODEL_FOLDER --data-dir tofu [--questions 8] [--n 20]

MODEL_FOLDER: a model in HF's layout, e.g. the fine-tuned model a run cached
($PMC_MIN_CACHE/finetuned/smollm2-135m-<hash>) or a run's saved `model`.
"""

import argparse

import numpy as np

import pmc_min
from pmc_min import pmc
from pmc_min.config import UnlearnConfig, preset_settings
from pmc_min.data import load_split, resolve_data_dir
from pmc_min.qa import score_answers

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--questions", type=int, default=8)
parser.add_argument("--n", type=int, help="draws per question (default: the protocol's, 20)")
args = parser.parse_args()
cfg = UnlearnConfig(**preset_settings("instruct", "slice")["unlearn"])
n = args.n or cfg.n_samples

model, tok = pmc_min.load(args.model)
questions = [r["question"] for r in load_split(resolve_data_dir(args.data_dir), "forget01")][:args.questions]
judge = pmc.FluencyScorer(model, tok, cfg.max_length, cfg.batch_size)
seeds = [pmc.draw_seed(cfg.seed, 1, q) for q in range(len(questions))]
draws = pmc.sample_answers(judge.model, tok, questions, n, cfg.sampling, cfg.max_length, seeds)
qs, answers = [q for q, xs in zip(questions, draws) for _ in xs], [x for xs in draws for x in xs]
distinct = np.array(judge(qs, answers))
total, count = score_answers(judge.model, tok, qs, answers, cfg.max_length, cfg.batch_size)
every = total / count
print(f"{len(answers)} draws, {len(set(zip(qs, answers)))} distinct (question, answer) pairs; "
      f"largest |distinct - every| {np.abs(distinct - every).max():.2g} nats a token, "
      f"{(distinct == every).mean():.0%} equal")
