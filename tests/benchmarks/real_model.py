"""Every method on a real pretrained LM, SmolLM2-135M-Instruct, under the CPU
protocol (run.py's CPU_PROTOCOL: TOFU forget01, fine-tuned on a 10-author
slice), all on the same cached fine-tuned model, with TOFU's metrics, the
leakage and prefilling attacks and the fluency of the forget answers; prints
the tables of docs/results-real.md and the answers to 5 forget questions.

    python tests/benchmarks/real_model.py [--out runs/real] [--data-dir tofu]

Each row is one run.py command (printed); rows with a results.json are read,
not rerun, and a stopped row continues from its last checkpoint, so an
interrupted sweep continues where it stopped (`sweep.run_rows`).
"""

import argparse
import sys
from pathlib import Path

from sweep import run_rows

# PMC with the protocol's defaults (T 1.25, lr 1e-4), and with the instruct preset's T 0.9 and half the lr.
RUNS = [("PMC", ["--method", "pmc", "--temperature", "1.25", "--lr", "1e-4"]),
        ("PMC T=0.9 lr=5e-5", ["--method", "pmc", "--temperature", "0.9", "--lr", "5e-5"]),
        ("retain-only reference", ["--reference", "retain"]), ("NPO", ["--method", "npo"]),
        ("SimNPO", ["--method", "simnpo"]), ("GA", ["--method", "ga"]), ("GD", ["--method", "gd"]),
        ("IDK", ["--method", "idk"])]

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/real")
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
args = parser.parse_args()

data = ["--data-dir", args.data_dir] if args.data_dir else []
rows = run_rows([(name, ["--model", args.model, *data, *flags, "--eval", "tofu,leakage,prefill"],
                  Path(args.out) / name.lower().replace(" ", "-").replace("=", "")) for name, flags in RUNS], args.only)
if not rows:
    sys.exit("no results yet")


def cell(text: str, limit: int = 160) -> str:
    """One markdown table cell: one line, pipes escaped, long answers cut."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " …"


def cells(r: dict) -> str:
    rouge, rb, t = r["rouge_l_recall"], r["robustness"], r["tofu"]
    return (f"{r['unlearn_quality']:.1f} | {r['utility']:.1f} | {rouge['forget']:.3f} | {rouge['retain']:.3f} | "
            f"{rb['leakage']['mean_max_rouge_l_recall']:.3f} | {rb['prefill']['rouge_l_recall']:.3f} | "
            f"{rb['prefill']['mean_max_rouge_l_recall']:.3f} | {r['fluency_nll']['forget']:.2f} | "
            f"{t['forget_quality']:.2e} | {t['model_utility']:.3f}")


m = rows[0][1]["config"].get("eval_samples", 5)
print(f"\n| model | unlearn quality | utility | forget ROUGE-L | retain ROUGE-L | leakage (max of {m}) | "
      f"prefill, greedy | prefill, max of {m} | fluency (NLL/token) | forget quality | model utility | wall |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
first = rows[0][1]
print(f"| fine-tuned (before unlearning) | {cells(first['before'])} | — |")
for name, r in rows:
    stages = r.get("stage_seconds", {})
    spent = ", ".join(f"{k} {v / 60:.1f}" for k, v in stages.items())
    print(f"| {name} | {cells(r['after'])} | {r['wall_seconds'] / 60:.1f} min ({spent}) |")

print()
for i in range(5):
    ex = first["before"]["examples"]["forget"][i]
    print(f"**Q{i + 1}. {ex['question']}**\n\n| model | answer |\n|---|---|")
    print(f"| ground truth | {cell(ex['answer'])} |")
    print(f"| fine-tuned | {cell(ex['generated'])} |")
    for name, r in rows:
        print(f"| {name} | {cell(r['after']['examples']['forget'][i]['generated'])} |")
    print()
