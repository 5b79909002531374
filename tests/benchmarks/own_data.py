"""Your own data on the embedded default (docs/own-data.md): 10 forget questions
as a plain text file, one from each forget10 author, unlearned with PMC from the
questions alone; prints the table of docs/own-data.md.

    python tests/benchmarks/own_data.py [--out runs/own] [-- extra run.py flags]

Rows (each one run.py command, printed; rows with a results.json are read, not rerun):
- "retain split": --forget-questions forget.txt, the tiny default's retain split (QA pairs);
- "questions only": the same with --retain retain.txt, the retain split's questions without
  their answers (self-distilled retain: no answer anywhere in the run's inputs);
- "with answers": the first row plus --forget-answers answers.jsonl, for evaluation only;
  its training must equal the first row's, which the script checks.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pmc_min import tiny  # noqa: E402
from pmc_min.data import RETAIN_OF, load_split  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/own")
parser.add_argument("extra", nargs="*", help="more run.py flags, after --")
args = parser.parse_args()
out = Path(args.out).resolve()
out.mkdir(parents=True, exist_ok=True)

_, data_dir = tiny.build(log=print)
forget = load_split(data_dir, "forget10")[::20][:10]  # one question from each of the 10 forget authors
(out / "forget.txt").write_text("".join(r["question"] + "\n" for r in forget))
(out / "retain.txt").write_text("".join(r["question"] + "\n" for r in load_split(data_dir, RETAIN_OF["forget10"])))
(out / "answers.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                           for r in forget))

ROWS = [("retain split", []), ("questions only", ["--retain", str(out / "retain.txt")]),
        ("with answers", ["--forget-answers", str(out / "answers.jsonl")])]
results = {}
for name, flags in ROWS:
    folder = out / name.replace(" ", "-")
    command = [sys.executable, "run.py", "--forget-questions", str(out / "forget.txt"), *flags, *args.extra,
               "--out", str(folder)]
    if not (folder / "results.json").is_file():
        print("$", shlex.join(command[1:]), flush=True)
        subprocess.run([*command, "--no-progress"], check=True, cwd=ROOT)
    results[name] = json.loads((folder / "results.json").read_text())

a, c = results["retain split"], results["with answers"]
same = a["curves"]["final_picks"] == c["curves"]["final_picks"] and a["curves"]["loss"] == c["curves"]["loss"]
print(f"\nTraining with and without --forget-answers identical (picks and losses): {same}")

m = a["after"]["similarity_to_y0"]["samples_per_question"]
print(f"\n| run | | forget vs y0 | retain vs y0 | forget, max of {m} samples vs y0 | forget vs truth | "
      f"forget, max of {m} samples vs truth | wall |")
print("|---|---|---|---|---|---|---|---|")
for name, r in results.items():
    for when in ("before", "after"):
        s, t = r[when]["similarity_to_y0"], r[when].get("ground_truth")
        truth = (f"{t['rouge_l_recall']['forget']:.3f} | {t['leakage']['mean_max_rouge_l_recall']:.3f}" if t
                 else "— | —")
        wall = f"{r['wall_seconds']:.0f} s" if when == "after" else ""
        print(f"| {name} | {when} | {s['forget']:.3f} | {s['retain']:.3f} | {s['forget_max_of_samples']:.3f} | "
              f"{truth} | {wall} |")

print("\n| question | y0 (before) | after PMC |\n|---|---|---|")
for e in c["after"]["similarity_to_y0"]["examples"]:
    print(f"| {e['question']} | {e['y0']} | {e['generated']} |")
