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
from .qa import generate_answers
from .rouge import rouge_l_recall
from .tokenizer import Tokenizer

SPLITS = ("forget", "forget_paraphrased", "retain", "world_facts", "real_authors")


def eval_sets(data_dir, split: str, full: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    """(questions, ground-truth answers) for each evaluation split."""
    forget = load_split(data_dir, split)
    paraphrased = load_split(data_dir, f"{split}_perturbed", required=("paraphrased_question", "paraphrased_answer"))
    retain = load_split(data_dir, RETAIN_OF[split])
    if not full:
        retain = [retain[i] for i in np.random.default_rng(12345).integers(0, len(retain), 400)]
    world, real = load_split(data_dir, "world_facts"), load_split(data_dir, "real_authors")
    qa = lambda rows, q="question", a="answer": ([r[q] for r in rows], [r[a] for r in rows])  # noqa: E731
    return {"forget": qa(forget), "forget_paraphrased": qa(paraphrased, "paraphrased_question", "paraphrased_answer"),
            "retain": qa(retain), "world_facts": qa(world), "real_authors": qa(real)}


def summarise(rouge: dict[str, float]) -> dict[str, float]:
    return {"unlearn_quality": 100 * (1 - (rouge["forget"] + rouge["forget_paraphrased"]) / 2),
            "utility": 100 * (rouge["retain"] + rouge["world_facts"] + rouge["real_authors"]) / 3}


def evaluate(model: Transformer, tokenizer: Tokenizer, sets: dict, max_length: int = 200,
             examples: int = 3) -> dict:
    """Greedy answers on every split; ROUGE-L recall vs the ground truth; the two summary numbers."""
    rouge, shown = {}, {}
    for name, (questions, answers) in sets.items():
        generated = [g[0] for g in generate_answers(model, tokenizer, questions, n=1,
                                                     max_length=max_length)]
        rouge[name] = float(np.mean([rouge_l_recall(a, g) for a, g in zip(answers, generated)]))
        shown[name] = [{"question": q, "answer": a, "generated": g}
                       for q, a, g in list(zip(questions, answers, generated))[:examples]]
    summary = summarise(rouge) if set(SPLITS) <= set(rouge) else {}
    return {**summary, "rouge_l_recall": rouge, "examples": shown}
