"""Every method on the embedded default with every robustness evaluation, and
the retain-only reference; prints the README's markdown table.

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
        ("NPO", ["--method", "npo"])]

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
            f"{shift(vs_reference)} | {shift(vs_before)} | {rb['mcq']['least_likely_accuracy']:.2f} | "
            f"{factleak['greedy']:.2f} | {factleak[any_key]:.2f}")


print("| model | unlearn quality | utility | leakage (max ROUGE-L of 16 samples) | prefill ROUGE-L | "
      "over-unlearning Δp vs reference (mean ± std) | Δp vs before unlearning | least-likely-option accuracy | "
      "fact recall, greedy | fact recall, any of 16 |")
print("|---|---|---|---|---|---|---|---|---|---|")
if rows:
    print(f"| fine-tuned (before unlearning) | {cells(rows[0][1])} |")
for name, _, after in rows:
    print(f"| {name} | {cells(after)} |")
