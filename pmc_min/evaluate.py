"""Evaluation as the authors define it (docs/method.md §3): greedy answers, ROUGE-L
recall against the ground truth, averaged per split.

    unlearn quality = 100 * (1 - (R_forget + R_forget_paraphrased) / 2)
    utility         = 100 * (R_retain + R_world_facts + R_real_authors) / 3

The retain split is evaluated on 400 rows drawn as the authors draw them,
numpy.random.default_rng(12345).integers(0, len(retain), 400) (with
replacement), unless a full evaluation is asked for. The paraphrased forget
split asks each forget question in its paraphrased form and scores the
answer against the paraphrased answer (the authors' data loader replaces
both fields).
"""

from __future__ import annotations

import numpy as np

from .data import RETAIN_OF, load_split
from .model import Transformer
from .qa import generate_answers, score_answers
from .rouge import rouge_l_recall
from .tokenizer import Tokenizer

SPLITS = ("forget", "forget_paraphrased", "retain", "world_facts", "real_authors")


def eval_sets(data_dir, split: str, full: bool = False, retain: list[dict] | None = None,
              rows: int | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """(questions, ground-truth answers) for each evaluation split. With `rows` (the CPU
    protocol), `rows` retain questions spread evenly over the given `retain` rows and the
    first `rows` of world facts and real authors."""
    forget = load_split(data_dir, split)
    paraphrased = load_split(data_dir, f"{split}_perturbed", required=("paraphrased_question", "paraphrased_answer"))
    world, real = load_split(data_dir, "world_facts"), load_split(data_dir, "real_authors")
    if rows is not None:
        retain = retain[::max(1, len(retain) // rows)][:rows]
        world, real = world[:rows], real[:rows]
    else:
        retain = load_split(data_dir, RETAIN_OF[split])
        if not full:
            retain = [retain[i] for i in np.random.default_rng(12345).integers(0, len(retain), 400)]
    qa = lambda rows, q="question", a="answer": ([r[q] for r in rows], [r[a] for r in rows])  # noqa: E731
    return {"forget": qa(forget), "forget_paraphrased": qa(paraphrased, "paraphrased_question", "paraphrased_answer"),
            "retain": qa(retain), "world_facts": qa(world), "real_authors": qa(real)}


def summarise(rouge: dict[str, float]) -> dict[str, float]:
    return {"unlearn_quality": 100 * (1 - (rouge["forget"] + rouge["forget_paraphrased"]) / 2),
            "utility": 100 * (rouge["retain"] + rouge["world_facts"] + rouge["real_authors"]) / 3}


def evaluate(model: Transformer, tokenizer: Tokenizer, sets: dict, max_length: int = 200,
             examples: int = 5) -> tuple[dict, dict[str, list[str]]]:
    """Greedy answers on every split; ROUGE-L recall vs the ground truth; the two summary
    numbers. Returns (result, the greedy answers of every split)."""
    rouge, shown, greedy = {}, {}, {}
    for name, (questions, answers) in sets.items():
        greedy[name] = [g[0] for g in generate_answers(model, tokenizer, questions, n=1, max_length=max_length)]
        rouge[name] = float(np.mean([rouge_l_recall(a, g) for a, g in zip(answers, greedy[name])]))
        shown[name] = [{"question": q, "answer": a, "generated": g}
                       for q, a, g in list(zip(questions, answers, greedy[name]))[:examples]]
    summary = summarise(rouge) if set(SPLITS) <= set(rouge) else {}
    return {**summary, "rouge_l_recall": rouge, "examples": shown}, greedy


def fluency_nll(scorer: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str],
                max_length: int, batch_size: int = 32) -> float:
    """The mean per-token NLL of the answers under `scorer`, each prompted with its question
    (answer tokens and the end-of-answer token, as in training; tokens pooled over answers).
    Scored by the pretrained model before any TOFU fine-tuning, it tells language from noise."""
    sums, counts = score_answers(scorer, tokenizer, questions, answers, max_length, batch_size)
    return float(sums.sum() / max(counts.sum(), 1))
