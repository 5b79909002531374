"""PMC on SmolLM2-135M-Instruct as the authors run it, on the CPU's TOFU slice: `--protocol slice`
(forget01, 8 retain authors, the same fine-tuned model as `--protocol cpu`) with the authors'
instruct settings (lambda 1.25, n 20, T 0.9, top-p 0.95, top-k 50, 30 epochs, lr 1e-5, batches
of 8 x 2), with the paper's reward and with `--reward fluent`, beside the CPU protocol's rows;
prints the table of docs/results-real.md and the first five answers of each run.

    python tests/benchmarks/slice.py --data-dir tofu [--out runs/slice]

Each row is one run.py command (printed). A row with a results.json is read, not rerun; a row
whose run was stopped continues from its last checkpoint (`run.py --resume`), so the sweep
can be spread over several sittings. Rows run one after the other (`sweep.run_rows`).
"""

import argparse
import sys
from pathlib import Path

from sweep import run_rows

RUNS = [("cpu, rouge", ["--protocol", "cpu"]), ("cpu, fluent", ["--protocol", "cpu", "--reward", "fluent"]),
        ("slice, rouge", ["--protocol", "slice"]), ("slice, fluent", ["--protocol", "slice", "--reward", "fluent"])]

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/slice")
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
args = parser.parse_args()

data = ["--data-dir", args.data_dir] if args.data_dir else []
rows = run_rows([(name, ["--model", args.model, *data, *flags], Path(args.out) / name.replace(", ", "-"))
                 for name, flags in RUNS], args.only)
if not rows:
    sys.exit("no results yet")

print("\n| run | unlearn quality | utility | forget | retain | fluency (NLL/token) | steps | wall |")
print("|---|---|---|---|---|---|---|---|")
first = rows[0][1]["before"]
print(f"| fine-tuned (before) | {first['unlearn_quality']:.1f} | {first['utility']:.1f} | "
      f"{first['rouge_l_recall']['forget']:.3f} | {first['rouge_l_recall']['retain']:.3f} | "
      f"{first['fluency_nll']['forget']:.2f} | | |")
for name, r in rows:
    a, c = r["after"], r["config"]
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in r["stage_seconds"].items())
    print(f"| {name} (n {c['n_samples']}, T {c['temperature']}, lr {c['lr']:g}, {c['epochs']} epochs) | "
          f"{a['unlearn_quality']:.1f} | {a['utility']:.1f} | {a['rouge_l_recall']['forget']:.3f} | "
          f"{a['rouge_l_recall']['retain']:.3f} | {a['fluency_nll']['forget']:.2f} | {r['curves']['step'][-1]} | "
          f"{r['wall_seconds'] / 60:.1f} min ({stages}) |")
for name, r in rows:
    print(f"\n{name}, the first five answers after unlearning:")
    for i, answer in enumerate(r["after"]["answers"]["forget"][:5]):
        print(f"  {i + 1}. {' '.join(answer.split())}")
