"""TOFU's metrics in the files open-unlearning's evaluator writes, so that its tools read
pmc_min's results, and its published retain-model logs serve as forget quality's reference.

Their shape, as locuslab/open-unlearning writes them:
- `TOFU_EVAL.json` (src/evals/base.py, `save_logs`): metric name -> {"agg_value": x,
  "value_by_index": {"0": {...}, "1": {...}}}, keys sorted, indices the rows' positions in their
  file. Probabilities (src/evals/metrics/memorization.py, `probability`; utils.py,
  `evaluate_probability`) hold {"prob", "avg_loss"} per index, lists for the perturbed answers;
  ROUGE (`rouge`) holds {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth",
  "generation"}; truth ratios (`truth_ratio`) and the normalised probabilities hold {"score"} and
  {"prob"}; forget quality (privacy.py, `ks_test`) and model utility (utility.py, `hm_aggregate`)
  hold an agg_value only (forget quality's is null without a reference).
- `TOFU_SUMMARY.json` (base.py, `summarize`): the top-level metrics of configs/eval/tofu.yaml,
  name -> agg_value, a null one left out.
- forget quality reads a retain model's TOFU_EVAL.json (`retain_logs_path`): the scores of its
  `forget_truth_ratio`, in a two-sample KS test against this model's (privacy.py, `ks_test`).

What pmc_min writes differs from what open-unlearning would compute on the same model in these
ways, all documented in docs/usage.md:
- the metrics pmc_min does not compute are left out: privleak, mia_min_k, extraction_strength;
- open-unlearning adds 1e-10 to the denominators of the truth ratio and of
  min(TR, 1/TR); pmc_min does not: they differ where P(paraphrased) < ~1e-6 only;
- every number is computed at the run's max_length (prompt and answer together), and greedy
  answers are written within it; open-unlearning scores at max_length 512 and writes 200 new
  tokens (configs/data/datasets/TOFU_QA_*.yaml, configs/generation/default.yaml). TOFU's
  answers fit either, so the scores agree; a model that rambles past the budget is cut sooner.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import UserError
from .rouge import rouge_1_recall, rouge_l

PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
SUMMARY = ("forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "model_utility")


def indexed(values: list) -> dict[str, object]:
    return {str(i): v for i, v in enumerate(values)}


def probability(avg_loss: np.ndarray) -> dict:
    """avg_loss (n,) or (n, k): P = exp(-avg_loss) per answer; agg_value the mean over all."""
    prob = np.exp(-avg_loss)
    return {"agg_value": float(prob.mean()),
            "value_by_index": indexed([{"prob": p, "avg_loss": a} for p, a in zip(prob.tolist(), avg_loss.tolist())])}


def scores(values: np.ndarray, agg_value: float, key: str = "score") -> dict:
    return {"agg_value": float(agg_value), "value_by_index": indexed([{key: float(v)} for v in values])}


def rouge(rows: list[dict], prompts: list[str], generations: list[str], agg_value: float) -> dict:
    entries = []
    for r, prompt, generation in zip(rows, prompts, generations):
        _, recall, f1 = rouge_l(r["answer"], generation)
        entries.append({"rouge1_recall": rouge_1_recall(r["answer"], generation), "rougeL_f1": f1,
                        "rougeL_recall": recall, "input": prompt, "ground_truth": r["answer"],
                        "generation": generation})
    return {"agg_value": agg_value, "value_by_index": indexed(entries)}


def eval_logs(measured: dict[str, dict], model_utility: float, forget_quality: float | None) -> dict:
    """TOFU_EVAL.json's content, from what `tofu.evaluate` measured: measured[split] (forget,
    retain, real_authors, world_facts) holds the split's `rows`, their `losses`
    (tofu.item_losses), per-item scores `items` and their aggregates `metrics` (tofu.item_scores,
    tofu.summarise), and the `prompts` and greedy `generations`."""
    logs: dict[str, dict] = {}
    for split, m in measured.items():
        pre, losses, items, metrics = PREFIX[split], m["losses"], m["items"], m["metrics"]
        logs[f"{pre}_Q_A_Prob"] = probability(losses["answer"])
        logs[f"{pre}_Q_A_PERT_Prob"] = probability(losses["perturbed"])
        logs[f"{pre}_Q_A_ROUGE"] = rouge(m["rows"], m["prompts"], m["generations"], metrics["rouge_l_recall"])
        if split in ("forget", "retain"):
            logs[f"{pre}_Q_A_PARA_Prob"] = probability(losses["paraphrased"])
        else:  # P(answer) normalised over the true and perturbed answers
            logs[f"{pre}_Q_A_Prob_normalised"] = scores(items["probability"], metrics["probability"], key="prob")
        # forget: closer to 1 is better; elsewhere a true answer more likely than the wrong ones
        name = "forget_truth_ratio" if split == "forget" else f"{pre}_Truth_Ratio"
        logs[name] = scores(items["truth_ratio"], metrics["truth_ratio"])
    logs["model_utility"] = {"agg_value": model_utility}
    logs["forget_quality"] = {"agg_value": forget_quality}
    return dict(sorted(logs.items()))


def summary(logs: dict) -> dict:
    """TOFU_SUMMARY.json's content: the top-level metrics' agg_value, a null one left out."""
    return {name: logs[name]["agg_value"] for name in sorted(SUMMARY)
            if name in logs and logs[name].get("agg_value") is not None}


def write(logs: dict, folder: Path) -> None:
    """TOFU_EVAL.json and TOFU_SUMMARY.json in folder (indented as open-unlearning writes them)."""
    from .files import write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "TOFU_EVAL.json", logs, indent=4)
    write_json(folder / "TOFU_SUMMARY.json", summary(logs), indent=4)


def write_from(result: dict, folder: Path) -> None:
    """The files of a run's evaluation (its --out after unlearning, before/ before): the
    "open_unlearning" entry of its TOFU result, taken out so that results.json stays small."""
    logs = result.get("tofu", {}).pop("open_unlearning", None)
    if logs is not None:
        write(logs, folder)


def reference_truth_ratios(path: str | Path) -> list[float]:
    """The forget truth ratios in a retain model's TOFU_EVAL.json (`forget_truth_ratio`'s
    value_by_index scores, in index order), as open-unlearning's forget quality reads them."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())["forget_truth_ratio"]["value_by_index"]
        ratios = [float(entries[i]["score"]) for i in sorted(entries, key=int)]
    except OSError as e:
        raise UserError(f"--reference-logs {path} cannot be read ({e.strerror or e}).") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"--reference-logs {path} is not an open-unlearning TOFU_EVAL.json with per-item "
                        f"forget_truth_ratio scores.") from None
    if not ratios or not all(math.isfinite(r) and r >= 0 for r in ratios):
        raise UserError(f"--reference-logs {path}: forget_truth_ratio needs at least one score, each a finite "
                        f"ratio >= 0.")
    return ratios
