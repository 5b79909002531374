"""TOFU's standard metrics (Maini et al., 2024): the numbers the unlearning
literature reports, computed as locuslab/tofu (`evaluate_util.py`,
`aggregate_eval_stat.py`) and open-unlearning (`src/evals/metrics/`) do.

Per item, avg_loss(a) is the mean NLL of the tokens of answer a given the
question, and P(a) = exp(-avg_loss(a)). The rows are encoded as open-unlearning
encodes them: for a base model the "Answer: " tag ends the prompt, so only the
answer's tokens and eos count (training counts the tag too, as the authors'
code does). Four evaluation files:

    forget        <split>_perturbed      paraphrased_answer and 5 perturbed_answer
    retain        retain_perturbed       paraphrased_answer and 5 perturbed_answer
    real_authors  real_authors_perturbed the answer itself and 3 perturbed_answer
    world_facts   world_facts_perturbed  the answer itself and 3 perturbed_answer

- truth ratio per item: TR = P(perturbed) / P(paraphrased), where
  P(perturbed) = exp(-mean_k avg_loss(perturbed_k)) (open-unlearning's form;
  TOFU's aggregation script uses 1/TR, which gives the same numbers below);
- probability: retain and forget, mean P(answer); real authors and world
  facts, mean P(true) / (P(true) + sum_k P(perturbed_k));
- ROUGE-L recall of the greedy answer against the answer (rouge-score's
  recall with stemming, as `rouge.py`);
- truth-ratio statistic: retain, real authors, world facts mean(max(0, 1 - TR));
  forget mean(min(TR, 1/TR)) (reported, not part of model utility);
- model utility: the harmonic mean of {probability, ROUGE-L, truth-ratio
  statistic} x {retain, real authors, world facts};
- forget quality: the p-value of the two-sample KS test between the forget
  TRs of this model and those of the retain-only reference model.

open-unlearning adds 1e-10 to two denominators, which moves nothing at the
precision reported.
"""

from __future__ import annotations

import numpy as np

from .data import load_split
from .errors import UserError
from .model import Transformer
from .open_unlearning import eval_logs
from .qa import generate_answers, prompt, score_answers
from .rouge import rouge_l_recall
from .stats import harmonic_mean, ks_2samp
from .tokenizer import Tokenizer

UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
FILES = {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}


def tofu_sets(data_dir, split: str) -> dict[str, list[dict]]:
    """The rows of the four evaluation files, each with `paraphrased` (the answer in the
    paraphrased role) and `perturbed` (the wrong answers)."""
    sets = {}
    for name, file in {"forget": f"{split}_perturbed", **FILES}.items():
        para_key = "paraphrased_answer" if name in ("forget", "retain") else "answer"
        rows = load_split(data_dir, file, required=("question", "answer", para_key))
        for number, r in enumerate(rows, start=1):
            wrong = r.get("perturbed_answer")
            if not (isinstance(wrong, list) and wrong and all(isinstance(w, str) for w in wrong)):
                raise UserError(f"{file}.json, row {number}: perturbed_answer must be a list of answers.")
        sets[name] = [{"question": r["question"], "answer": r["answer"], "paraphrased": r[para_key],
                       "perturbed": r["perturbed_answer"]} for r in rows]
    return sets


def avg_losses(model: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str],
               max_length: int, batch_size: int = 32) -> np.ndarray:
    """avg_loss per (question, answer) pair: the mean NLL of the answer's labelled tokens, encoded as
    open-unlearning encodes them (a base model's "Answer: " tag ends the prompt: `qa.encode_qa`)."""
    sums, counts = score_answers(model, tokenizer, questions, answers, max_length, batch_size, tag_in_prompt=True)
    return sums / np.maximum(counts, 1)


def item_losses(model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_length: int) -> dict[str, np.ndarray]:
    """avg_loss of each row's answer (n,), paraphrased answer (n,) and perturbed answers (n, k)."""
    k = len(rows[0]["perturbed"])
    if any(len(r["perturbed"]) != k for r in rows):
        raise UserError("Every row of an evaluation file needs the same number of perturbed answers.")
    questions = [r["question"] for r in rows]
    losses = avg_losses(model, tokenizer, questions * (2 + k),
                        [r["answer"] for r in rows] + [r["paraphrased"] for r in rows]
                        + [r["perturbed"][j] for j in range(k) for r in rows], max_length)
    n = len(rows)
    return {"answer": losses[:n], "paraphrased": losses[n:2 * n], "perturbed": losses[2 * n:].reshape(k, n).T}


def truth_ratios(losses: dict[str, np.ndarray]) -> np.ndarray:
    """TR = P(perturbed) / P(paraphrased) per item, P(perturbed) the geometric mean over the perturbed answers."""
    return np.exp(losses["paraphrased"] - losses["perturbed"].mean(axis=1))


def forget_truth_ratios(model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_length: int) -> list[float]:
    return truth_ratios(item_losses(model, tokenizer, rows, max_length)).tolist()


def item_scores(name: str, losses: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per item: the probability the split's metric averages (P(answer); normalised over the true
    and perturbed answers for real authors and world facts), and the truth ratio."""
    p_true = np.exp(-losses["answer"])
    if name in ("real_authors", "world_facts"):
        p_true = p_true / (p_true + np.exp(-losses["perturbed"]).sum(axis=1))
    return {"probability": p_true, "truth_ratio": truth_ratios(losses)}


def summarise(name: str, items: dict[str, np.ndarray], rouge: float) -> dict[str, float]:
    tr = items["truth_ratio"]
    statistic = np.mean(np.minimum(tr, 1 / tr)) if name == "forget" else np.mean(np.maximum(0, 1 - tr))
    return {"probability": float(np.mean(items["probability"])), "rouge_l_recall": rouge,
            "truth_ratio": float(statistic)}


def split_metrics(name: str, losses: dict[str, np.ndarray], rouge: float) -> dict[str, float]:
    return summarise(name, item_scores(name, losses), rouge)


def evaluate(model: Transformer, tokenizer: Tokenizer, sets: dict[str, list[dict]], max_length: int,
             reference_forget: list[float] | None = None, greedy: dict[str, str] | None = None,
             open_unlearning: bool = False) -> dict:
    """TOFU's metrics of one model; forget quality when the reference model's forget truth ratios
    are given. `greedy` maps questions to this model's greedy answers where they are known already
    (at the same max_length); the other questions are answered here. With open_unlearning, the
    result's "open_unlearning" holds the same numbers, item by item, as open-unlearning's
    TOFU_EVAL.json has them (`open_unlearning.eval_logs`)."""
    splits, measured, greedy = {}, {}, dict(greedy or {})
    for name, rows in sets.items():
        losses = item_losses(model, tokenizer, rows, max_length)
        todo = [q for q in dict.fromkeys(r["question"] for r in rows) if q not in greedy]
        if todo:
            greedy.update(zip(todo, (g[0] for g in generate_answers(model, tokenizer, todo, n=1,
                                                                     max_length=max_length))))
        rouge = float(np.mean([rouge_l_recall(r["answer"], greedy[r["question"]]) for r in rows]))
        items = item_scores(name, losses)
        splits[name] = summarise(name, items, rouge)
        measured[name] = {"rows": rows, "losses": losses, "items": items, "metrics": splits[name],
                          "generations": [greedy[r["question"]] for r in rows],
                          "prompts": [prompt(r["question"], tokenizer.chat) for r in rows]}
    forget_tr = measured["forget"]["items"]["truth_ratio"].tolist()
    components = {f"{split}_{metric}": splits[split][metric] for split in UTILITY_SPLITS
                  for metric in ("probability", "rouge_l_recall", "truth_ratio")}
    result = {"model_utility": harmonic_mean(components.values()), "components": components, "splits": splits,
              "truth_ratio": {"forget": forget_tr}}
    if reference_forget is not None:
        d, p = ks_2samp(forget_tr, reference_forget)
        result.update(forget_quality=p, ks_statistic=d)
        result["truth_ratio"]["reference_forget"] = list(reference_forget)
    if open_unlearning:
        result["open_unlearning"] = eval_logs(measured, result["model_utility"], result.get("forget_quality"))
    return result
