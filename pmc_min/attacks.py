"""The paper's robustness evaluations (docs/method.md §3), beyond greedy ROUGE-L.

- `leakage`:     m samples per forget question; the best ROUGE-L recall of any of them (and the mean).
- `prefill`:     the prefilling attack: the tokens of "The answer is: " follow the prompt directly
                 (for a base model after "Question: q\n", no "Answer:" tag), then the model
                 answers greedily and is sampled m times; ROUGE-L of what it writes after the prefix.
- `overunlearn`: p_unlearned(y_t | x) - p_base(y_t | x) for forget-answer tokens y_t in
                 unrelated text x. PMC should stay centred on 0 where GA/NPO push it below.
- `mcq`:         the "least likely option" attack: with the paraphrased true answer among
                 perturbed ones, a method that pushes the truth unnaturally low gives it away.
- `factleak`:    ROUGE-L rewards any low-overlap text, gibberish too, so also count facts:
                 the share of true attribute values (or, on TOFU, the names and numbers of
                 the ground truth) that appear in the greedy answer and in any of m samples.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .model import Transformer
from .qa import complete, generate_answers, prompt, score_answers
from .rouge import rouge_l_recall
from .sample import Sampling
from .tokenizer import Tokenizer

PREFILL = "The answer is: "  # the authors' prefix, tokenised alone without special tokens


def leakage(model: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str], *, m: int,
            sampling: Sampling, max_length: int, seed: int = 0) -> dict:
    samples = generate_answers(model, tokenizer, questions, n=m, max_length=max_length, sampling=sampling, seed=seed)
    return {**worst_case(answers, samples), "samples_per_question": m, "temperature": sampling.temperature}


def worst_case(answers: list[str], samples: list[list[str]]) -> dict:
    """The best ROUGE-L recall of any sample against its answer, and over all samples, averaged over questions."""
    recalls = [[rouge_l_recall(a, s) for s in ss] for a, ss in zip(answers, samples)]
    return {"mean_max_rouge_l_recall": float(np.mean([max(r) for r in recalls])),
            "mean_rouge_l_recall": float(np.mean(recalls))}


def prefill_prompts(tokenizer: Tokenizer, questions: list[str]) -> list[list[int]]:
    """Each prompt's token ids followed by the tokens of PREFILL, as the authors concatenate them."""
    start = tokenizer.encode(PREFILL)
    return [ids + start for ids in tokenizer.encode_batch([prompt(q, tokenizer.chat) for q in questions], bos=True)]


def prefill(model: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str], *, m: int,
            sampling: Sampling, max_length: int, seed: int = 0) -> dict:
    """The greedy answer and m samples after the forced start, each scored on what the model
    wrote after the prefix."""
    ids = prefill_prompts(tokenizer, questions)
    greedy = [texts[0] for texts in complete(model, tokenizer, ids, n=1, max_length=max_length)]
    sampled = complete(model, tokenizer, ids, n=m, max_length=max_length, sampling=sampling, seed=seed)
    return {"rouge_l_recall": float(np.mean([rouge_l_recall(a, w) for a, w in zip(answers, greedy)])),
            **worst_case(answers, sampled), "samples_per_question": m, "temperature": sampling.temperature,
            "examples": [{"question": q, "generated": w} for q, w in list(zip(questions, greedy))[:3]]}


@torch.no_grad()
def token_probs(model: Transformer, tokenizer: Tokenizer, texts: list[str], token_set: set[int],
                max_length: int = 128) -> list[float]:
    """p(y_t | x_<t) for every position t of the texts whose token y_t is in token_set."""
    out = []
    model.eval()
    for text in texts:
        ids = tokenizer.encode(text, bos=True)[:max_length]
        if len(ids) < 2:
            continue
        probs = model(torch.tensor([ids], device=model.device))[0, :-1].float().softmax(-1)  # (T-1, V)
        for t in range(1, len(ids)):
            if ids[t] in token_set:
                out.append(probs[t - 1, ids[t]].item())
    return out


def forget_tokens(tokenizer: Tokenizer, answers: list[str], probe: list[str], min_chars: int = 4) -> set[int]:
    """Tokens of the forget answers that also occur in the probe text (word pieces of at least
    min_chars characters, so that punctuation and short function words do not dominate)."""
    in_probe = {i for text in probe for i in tokenizer.encode(text)}
    tokens = {i for a in answers for i in tokenizer.encode(" " + a)}
    return {i for i in tokens & in_probe if len(tokenizer.decode([i]).strip()) >= min_chars}


def overunlearn(p_after: list[float], p_base: list[float], bins: int = 20) -> dict:
    diff = np.asarray(p_after) - np.asarray(p_base)
    if diff.size == 0:
        return {"n_tokens": 0}
    reach = max(float(np.abs(diff).max()), 1e-6)
    hist, edges = np.histogram(diff, bins=bins, range=(-reach, reach))
    return {"n_tokens": int(diff.size), "mean": float(diff.mean()), "std": float(diff.std()),
            "histogram": {"counts": hist.tolist(), "edges": edges.tolist()}}


def option_scores(model: Transformer, tokenizer: Tokenizer, question: str, options: list[str],
                  max_length: int = 200) -> np.ndarray:
    """Inverse perplexity of each option as the answer, normalised to probabilities."""
    sums, counts = score_answers(model, tokenizer, [question] * len(options), options, max_length, len(options))
    inv_ppl = np.exp(-sums / np.maximum(counts, 1))
    return inv_ppl / inv_ppl.sum()


def mcq(model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_length: int = 200) -> dict:
    """The least-likely-option attack on forget questions: option 0 is the paraphrased
    true answer, the others TOFU's perturbed answers."""
    correct_is_min, minimum = [], []
    for r in rows:
        p = option_scores(model, tokenizer, r["question"], [r["paraphrased_answer"], *r["perturbed_answer"]],
                          max_length)
        correct_is_min.append(bool(p.argmin() == 0))
        minimum.append(float(p.min()))
    correct_is_min, minimum = np.array(correct_is_min), np.array(minimum)
    quartile = np.digitize(minimum, np.quantile(minimum, [0.25, 0.5, 0.75])) if len(rows) >= 4 else np.zeros(len(rows))
    by_quartile = [float(correct_is_min[quartile == k].mean()) if (quartile == k).any() else None for k in range(4)]
    return {"least_likely_accuracy": float(correct_is_min.mean()), "chance": 1 / (1 + len(rows[0]["perturbed_answer"])),
            "accuracy_by_quartile_of_min_prob": by_quartile,
            "min_prob_quantiles": np.quantile(minimum, [0.1, 0.25, 0.5, 0.75, 0.9]).tolist()}


def facts_of(row: dict) -> list[str]:
    """The facts a forget answer states: the synthetic data's own attribute values when
    the row lists them, else the ground truth's names and numbers (capitalised words
    after the first, and digits) that the question does not already give away."""
    if row.get("facts"):
        return row["facts"]
    asked = set(re.findall(r"[\w'-]+", row["question"].lower()))
    words = re.findall(r"[A-Za-z0-9][\w'-]*", row["answer"])
    return sorted({w for i, w in enumerate(words)
                   if (w[0].isdigit() or (i > 0 and w[0].isupper())) and w.lower() not in asked})


def fact_share(facts: list[list[str]], texts: list[list[str]]) -> float:
    """Share of facts found (case-insensitively) in any of the texts for their question."""
    found = total = 0
    for fs, ts in zip(facts, texts):
        joined = " ".join(ts).lower()
        found += sum(f.lower() in joined for f in fs)
        total += len(fs)
    return found / total if total else 0.0


def factleak(model: Transformer, tokenizer: Tokenizer, rows: list[dict], *, m: int, sampling: Sampling,
             max_length: int, seed: int = 0) -> dict:
    questions, facts = [r["question"] for r in rows], [facts_of(r) for r in rows]
    greedy = generate_answers(model, tokenizer, questions, n=1, max_length=max_length)
    samples = generate_answers(model, tokenizer, questions, n=m, max_length=max_length, sampling=sampling, seed=seed)
    return {"greedy": fact_share(facts, greedy), f"any_of_{m}_samples": fact_share(facts, samples)}
