"""What the output layer costs a training step: one forward and backward of a TOFU batch (the
first 8 forget01 rows, encoded as for training) with the logits of every position, against the
same step with the head computed only where a label follows. Prints seconds, best of 2.

    python tests/benchmarks/head_cost.py --model gemma-3-270m --data-dir tofu
"""

import argparse
import json
import time
from pathlib import Path

import torch.nn.functional as F

import pmc_min
from pmc_min.qa import encode_qa, token_nll

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="gemma-3-270m")
parser.add_argument("--data-dir", required=True)
parser.add_argument("--rows", type=int, default=8)
args = parser.parse_args()

model, tok = pmc_min.load(args.model)
model.train()
rows = [json.loads(line) for line in (Path(args.data_dir) / "forget01.json").read_text().splitlines()][:args.rows]
batch = encode_qa(tok, [r["question"] for r in rows], [r["answer"] for r in rows], 160)
counted = batch["labels"][:, 1:] != -100
print(f"{args.model}: batch {tuple(batch['input_ids'].shape)}, {int(counted.sum())} labelled tokens")


def every_position():
    nll, n = token_nll(model, batch)
    (nll.sum() / n.sum()).backward()


def labelled_only():
    """The body as the model's forward runs it (its last layer's output, caught by a hook), the head
    only at the positions whose next token is labelled."""
    caught = []
    hook = model.final_layernorm.register_forward_pre_hook(lambda m, a: caught.append(a[0]) or (a[0][:, :1],))
    model(batch["input_ids"], batch["attention_mask"])
    hook.remove()
    hidden = caught[0][F.pad(counted, (0, 1))]
    logits = model.lm_head(model.final_layernorm(hidden))
    F.cross_entropy(logits.float(), batch["labels"][:, 1:][counted]).backward()


for step in (every_position, labelled_only):
    times = []
    for _ in range(2):
        model.zero_grad()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"{step.__name__}: {min(times):.2f} s forward and backward")
