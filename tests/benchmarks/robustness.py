"""Every method on the embedded default with every evaluation (`--eval all`:
TOFU's metrics and the robustness evaluations), and the retain-only
reference; prints the three markdown tables of docs/results-tiny.md and, with matplotlib,
writes <out>/tofu.png (forget quality on a log scale against model utility).

    python tests/benchmarks/robustness.py [--out runs/robustness]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The reference first: it is the base of every other run's over-unlearning probe.
RUNS = [("retain-only reference", ["--reference", "retain"]), ("PMC", ["--method", "pmc"]),
        ("GA", ["--method", "ga"]), ("GD", ["--method", "gd"]), ("IDK", ["--method", "idk"]),
        ("NPO", ["--method", "npo"]), ("SimNPO", ["--method", "simnpo"])]

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/robustness")
parser.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
args = parser.parse_args()

rows = []
for name, flags in RUNS:
    out = Path(args.out) / name.split()[0].lower()
    if not (out / "results.json").is_file() and (args.only is None or name in args.only):
        subprocess.run([sys.executable, str(ROOT / "run.py"), *flags, "--eval", "all", "--no-progress",
                        "--out", str(out)], check=True)
    if not (out / "results.json").is_file():
        continue
    r = json.loads((out / "results.json").read_text())
    rows.append((name, r["before"], r["after"]))


def shift(summary: dict | None) -> str:
    return f"{summary.get('mean', 0):+.4f} ± {summary.get('std', 0):.4f}" if summary else "—"


def cells(result: dict) -> str:
    rb = result["robustness"]
    ou = rb["overunlearn"]
    if ou.get("base") == "retain-only reference":
        vs_reference, vs_before = ou, ou.get("vs_before")
    else:  # the fine-tuned model (its own base) and the reference (whose base is the fine-tuned model)
        vs_reference, vs_before = None, ou
    factleak = rb["factleak"]
    any_key = next(k for k in factleak if k.startswith("any_of"))
    return (f"{result['unlearn_quality']:.1f} | {result['utility']:.1f} | "
            f"{rb['leakage']['mean_max_rouge_l_recall']:.3f} | {rb['prefill']['rouge_l_recall']:.3f} | "
            f"{rb['prefill']['mean_max_rouge_l_recall']:.3f} | {shift(vs_reference)} | {shift(vs_before)} | "
            f"{rb['mcq']['least_likely_accuracy']:.2f} | {factleak['greedy']:.2f} | {factleak[any_key]:.2f}")


def tofu_cells(result: dict) -> str:
    t = result["tofu"]
    c = t["components"]
    parts = [f"{c[f'{s}_{m}']:.3f}" for s in ("retain", "real_authors", "world_facts")
             for m in ("probability", "rouge_l_recall", "truth_ratio")]
    return f"{t['forget_quality']:.2e} | {t['ks_statistic']:.3f} | {t['model_utility']:.3f} | " + " | ".join(parts)


SPLITS = ("forget", "forget_paraphrased", "retain", "world_facts", "real_authors")
print("| model | unlearn quality | utility | " + " | ".join(SPLITS) + " | fluency (NLL/token) |")
print("|---|---|---|" + "---|" * (len(SPLITS) + 1))
for name, result in ([("fine-tuned (before unlearning)", rows[0][1])] if rows else []) + [(n, a) for n, _, a in rows]:
    recall = " | ".join(f"{result['rouge_l_recall'][s]:.3f}" for s in SPLITS)
    print(f"| {name} | {result['unlearn_quality']:.1f} | {result['utility']:.1f} | {recall} | "
          f"{result['fluency_nll']['forget']:.2f} |")

print("\n| model | unlearn quality | utility | leakage (max ROUGE-L of 16 samples) | prefill ROUGE-L, greedy | "
      "prefill, max of 16 samples | over-unlearning Δp vs reference (mean ± std) | Δp vs before unlearning | "
      "least-likely-option accuracy | fact recall, greedy | fact recall, any of 16 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
if rows:
    print(f"| fine-tuned (before unlearning) | {cells(rows[0][1])} |")
for name, _, after in rows:
    print(f"| {name} | {cells(after)} |")

print("\n| model | forget quality (KS p) | KS statistic | model utility | retain P | retain ROUGE | retain TR | "
      "real authors P | real authors ROUGE | real authors TR | world facts P | world facts ROUGE | world facts TR |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
points = []
if rows:
    print(f"| fine-tuned (before unlearning) | {tofu_cells(rows[0][1])} |")
    points.append(("fine-tuned", rows[0][1]["tofu"]))
for name, _, after in rows:
    print(f"| {name} | {tofu_cells(after)} |")
    points.append((name, after["tofu"]))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None and points:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (name, t) in enumerate(points):
        xy = (t["model_utility"], max(t["forget_quality"], 1e-300))
        ax.scatter(*xy, s=30)
        ax.annotate(name, xy, fontsize=8, textcoords="offset points", xytext=(5, 4 if i % 2 else -10))
    ax.set(yscale="log", xlabel="model utility", ylabel="forget quality (KS p-value, log scale)",
           title="TOFU's metrics on the embedded default (forget10)")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "tofu.png", dpi=120)
    print(f"\nWrote {Path(args.out) / 'tofu.png'}")
