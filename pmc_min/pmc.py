"""Partial Model Collapse (Scholten et al., 2025), step by step.

PMC never puts the forget answers into its objective. For each forget
question it samples answers from the *current* model, scores each by its
similarity to what the *original* model answered, and fine-tunes on the
least similar one, epoch after epoch. Trained on its own curated samples,
the model's distribution on those questions collapses onto the preferred
answers and the original answer's probability goes to 0; the retain loss
keeps the collapse partial. The steps (docs/method.md §2):

1. `initial_answers`   y0[q]: the original model's greedy answer, the reference of the reward.
2. `sample_answers`    n answers per question from the current model (T, top_p, top_k).
3. `score`             s(x) = ROUGE-L recall(reference=y0, candidate=x) (+ optional length penalty);
                      with --reward fluent, `fluent` adds how far x is less likely than the model's own
                      answers under the model before unlearning (beyond the paper; docs/method.md §2b).
4. `select`            the argmin of s (= the argmax of the reward 1 - s), or a Bradley-Terry draw.
5. `BestSoFar`         per question, the least similar answer seen so far; score 0 stops resampling.
6. `collapse_batch` and `pmc_loss`: NLL(pick | q) + lambda * NLL(retain answer | retain q).

`PMC` runs these steps in the training loop. `collapse_batch` receives questions
and picks only, so the forget ground truth cannot reach the objective.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from . import lora
from .checkpoint import build
from .engine import Share
from .method import Method, nll
from .model import Transformer
from .qa import encode_qa, generate_answers, greedy_answers, score_answers
from .rng import seed_of
from .rouge import rouge_l_recall
from .sample import Sampling
from .tokenizer import Tokenizer


def initial_answers(model: Transformer, tokenizer: Tokenizer, questions: list[str], max_length: int) -> list[str]:
    """Step 1: y0, the original model's greedy answer to every forget question."""
    return greedy_answers(model, tokenizer, questions, max_length)


def sample_answers(model: Transformer, tokenizer: Tokenizer, questions: list[str], n: int, sampling: Sampling,
                   max_length: int, seed: int | list[int] | None = None, compile: bool = False) -> list[list[str]]:
    """Step 2: n answers per question from the current model (seed: one per question, see `draw_seed`)."""
    return generate_answers(model, tokenizer, questions, n=n, max_length=max_length, sampling=sampling, seed=seed,
                            compile=compile)


def score(sample: str, y0: str, min_len: int = 0) -> float:
    """Step 3: ROUGE-L recall of the sample against y0 (stemming on). With
    min_len > 0, a sample of fewer than min_len words gets exp(-len) added
    (capped at 1), so that PMC does not collapse onto empty answers. Words are
    counted as the authors count them, `len(text.strip().split(" "))`."""
    s = rouge_l_recall(y0, sample)
    if min_len > 0:
        words = len(sample.strip().split(" "))  # the authors' count: an empty sample is 1 word
        if words < min_len:
            s = min(1.0, s + math.exp(-words))
    return s


def fluent(s: float, nll: float, budget: float) -> float:
    """Step 3 with --reward fluent: the score s plus the nats per token by which the sample is less
    likely, under the model before unlearning, than the least likely of that model's own samples
    (`budget`). Within the budget the paper's score is unchanged; beyond it, each nat per token
    weighs as much as all of ROUGE-L, so a sample off language loses to any on it that is not
    far closer to y0."""
    return s + max(0.0, nll - budget)


class FluencyScorer:
    """The model before unlearning, frozen, as --reward fluent's only judge: the mean NLL per
    token of an answer given its question (the answer's tokens and its end, as trained). It reads
    questions and the model's own samples only, never the forget answers."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_length: int, batch_size: int):
        weights = lora.merged_state(model)  # a plain model's own state, or the adapters merged in
        self.model = build(model.config, {k: v.detach().clone() for k, v in weights.items()}, device=model.device,
                           dtype=model.dtype).eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size

    def __call__(self, questions: list[str], answers: list[str]) -> list[float]:
        """Each distinct (question, answer) is scored once: at T 0.9 many draws repeat."""
        pairs = list(dict.fromkeys(zip(questions, answers)))
        total, count = score_answers(self.model, self.tokenizer, [q for q, _ in pairs], [a for _, a in pairs],
                                     self.max_length, self.batch_size)
        nll = dict(zip(pairs, (total / count).tolist()))
        return [nll[pair] for pair in zip(questions, answers)]

    def budget(self, questions: list[str], n: int, sampling: Sampling, seed: int, compile: bool = False) -> float:
        """The least likely, per token, of n samples of the model itself per question (epoch 0's seeds)."""
        seeds = [draw_seed(seed, 0, q) for q in range(len(questions))]
        own = sample_answers(self.model, self.tokenizer, questions, n, sampling, self.max_length, seeds, compile)
        return max(self([q for q, xs in zip(questions, own) for _ in xs], [x for xs in own for x in xs]))


def select(scores: list[float], tau: float = 0.0, rng: random.Random | None = None) -> int:
    """Step 4: the least similar sample (first of ties), i.e. argmax of the reward 1 - s.
    With tau > 0, the Bradley-Terry choice the theory is stated for (docs/method.md §4):
    sample i with probability softmax((1 - s) / tau)_i. The authors' code defines this
    rule (`sample_selection`) but never calls it; tau -> 0 is the argmax."""
    if tau == 0:
        return min(range(len(scores)), key=scores.__getitem__)
    low = min(scores)
    weights = [math.exp((low - s) / tau) for s in scores]  # e^{(1-s)/tau}, shifted so the largest is 1
    u, total = (rng or random).random() * sum(weights), 0.0
    for i, w in enumerate(weights):
        total += w
        if u < total:
            return i
    return len(scores) - 1


@dataclass
class BestSoFar:
    """Step 5: per forget question, the least similar answer sampled so far.

    A new pick replaces the stored one unless the stored score is strictly
    lower (ties replace, as in the authors' code). A question whose stored
    score is 0 shares no word with y0 and is no longer resampled."""
    answers: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)

    def offer(self, q: int, answer: str, s: float) -> None:
        if q in self.scores and self.scores[q] < s:
            return
        self.answers[q], self.scores[q] = answer, s

    def needs_sampling(self, q: int) -> bool:
        return self.scores.get(q) != 0.0


def draw_seed(seed: int, epoch: int, question: int) -> int:
    """The seed of a forget question's draws in an epoch: the same whichever batch, process
    or rank draws them (`rng`)."""
    return seed_of(seed, epoch, question)


def resample(model: Transformer, tokenizer: Tokenizer, cache: BestSoFar, batch: list[int], questions: list[str],
             y0: list[str], *, n: int, sampling: Sampling, max_length: int, min_len: int = 0,
             seed: int = 0, epoch: int = 1, compile: bool = False,
             tau: float = 0.0, fluency=None, budget: float = 0.0) -> dict[int, tuple[list, list]]:
    """Steps 2-5 for one batch of forget questions (indices into questions/y0) in an epoch;
    returns {question: (its samples, their scores)} for the questions it sampled. fluency
    (a FluencyScorer) and its budget: --reward fluent's scores (`fluent`)."""
    todo = [q for q in batch if cache.needs_sampling(q)]
    if not todo:
        return {}
    seeds = [draw_seed(seed, epoch, q) for q in todo]
    samples = sample_answers(model, tokenizer, [questions[q] for q in todo], n, sampling, max_length, seeds, compile)
    if fluency is not None:
        nlls = iter(fluency([questions[q] for q, xs in zip(todo, samples) for _ in xs], [x for xs in samples for x in xs]))
    drawn = {}
    for q, s, candidates in zip(todo, seeds, samples):
        scores = [score(x, y0[q], min_len) for x in candidates]
        if fluency is not None:
            scores = [fluent(v, next(nlls), budget) for v in scores]
        best = select(scores, tau, random.Random(s) if tau > 0 else None)  # Bradley-Terry's draw; argmax draws none
        cache.offer(q, candidates[best], scores[best])
        drawn[q] = (candidates, scores)
    return drawn


def collapse_batch(tokenizer: Tokenizer, questions: list[str], picks: list[str], max_length: int,
                   device="cpu") -> dict[str, torch.Tensor]:
    """Step 6a: the collapse batch, "Question: q\\n" -> "Answer: pick" + eos.
    It is built from questions and the model's own picks only."""
    return encode_qa(tokenizer, questions, picks, max_length, device)


class PMC(Method):
    """PMC in the training loop (docs/method.md §2). `start` is step 1; before each micro-batch,
    `prepare` runs steps 2-5 on its questions from the current weights (from a copy in
    cfg.sample_dtype if one is set) into the best-so-far cache; `batch` then holds the
    questions and their cached picks only (step 6a), and `loss` is step 6b."""
    name, kind, draws, needs_answers = "pmc", "collapse", True, False

    def __init__(self, model, tokenizer, rows, cfg):
        super().__init__(model, tokenizer, rows, cfg)
        self.questions, self.cache, self.y0, self.sampler = [r["question"] for r in rows], BestSoFar(), None, None
        self.fluency, self.budget = None, None  # --reward fluent's judge and budget

    def start(self, curves, y0=None):
        self.y0 = y0 or initial_answers(self.model, self.tokenizer, self.questions, self.cfg.max_length)
        curves.curves["logp_y0"].append(self.logp_y0())  # epoch 0
        if self.cfg.reward == "fluent":
            self.judge(self.model)
            self.budget = self.fluency.budget(self.questions, self.cfg.n_samples, self.cfg.sampling, self.cfg.seed,
                                              self.cfg.compile)

    def judge(self, before: Transformer) -> None:
        """--reward fluent: its judge is `before`, the model as it was before unlearning."""
        self.fluency = FluencyScorer(before, self.tokenizer, self.cfg.max_length, self.cfg.batch_size)

    def state_dict(self):
        return {"y0": self.y0, "cache_answers": {str(k): v for k, v in self.cache.answers.items()},
                "cache_scores": {str(k): v for k, v in self.cache.scores.items()}, "budget": self.budget}

    def load_state_dict(self, state):
        self.y0, self.budget = state["y0"], state.get("budget")
        self.cache = BestSoFar({int(k): v for k, v in state["cache_answers"].items()},
                               {int(k): v for k, v in state["cache_scores"].items()})

    def prepare(self, idx, epoch, curves):
        cfg, model = self.cfg, self.model
        dtype = getattr(torch, cfg.sample_dtype) if cfg.sample_dtype else model.dtype
        if lora.attached(model):  # a plain copy with the adapters merged in: no extra products per token
            weights = lora.merged_state(model)
            if self.sampler is None:
                self.sampler = build(model.config, weights, device=model.device, dtype=dtype)
            else:
                self.sampler.load_state_dict(weights)
        elif dtype == model.dtype:
            self.sampler = model
        elif self.sampler is None:
            self.sampler = build(model.config, dict(model.state_dict()), device=model.device, dtype=dtype)
        else:
            self.sampler.load_weights_from(model)
        drawn = resample(self.sampler, self.tokenizer, self.cache, idx, self.questions, self.y0, n=cfg.n_samples,
                         sampling=cfg.sampling, max_length=cfg.max_length, min_len=cfg.min_len, seed=cfg.seed,
                         epoch=epoch, compile=cfg.compile, tau=cfg.selection_temperature, fluency=self.fluency,
                         budget=self.budget)
        curves.draws(epoch, len(self.questions), drawn)
        curves.add(picked_rouge_l=[self.cache.scores[q] for q in idx])

    def batch(self, idx):
        return collapse_batch(self.tokenizer, [self.questions[q] for q in idx], [self.cache.answers[q] for q in idx],
                              self.cfg.max_length, self.model.device)

    def loss(self, model, forget, retain):
        return pmc_loss(model, forget, retain, self.cfg.lam)

    def logp_y0(self) -> list[float]:
        """log p(y0 | q) of every forget question under the current weights (the theory says it
        goes to -inf)."""
        return self.logprobs(self.questions, self.y0)

    def monitor(self):
        return {"logp_y0": self.logp_y0()}

    def result(self):
        return {"y0": self.y0, "final_picks": [self.cache.answers.get(q) for q in range(len(self.questions))],
                **({"fluency_budget": self.budget} if self.budget is not None else {})}


def pmc_loss(model: Transformer, collapse: Share, retain: Share, lam: float) -> tuple[torch.Tensor, dict]:
    """Step 6b: NLL(pick | q) + lambda * NLL(retain answer | retain q)."""
    forget_term, retain_term = nll(model, collapse), nll(model, retain)
    return forget_term + lam * retain_term, {"forget_loss": forget_term.item(), "retain_loss": retain_term.item()}
