"""The baselines the paper compares PMC with, each a loss on a forget batch
(ground-truth answers) and a retain batch. Unlike PMC, all of them optimise
on the forget answers themselves (or, for IDK, on a fixed replacement).

- GA      gradient ascent:        -NLL(forget)
- GD      gradient difference:    lambda NLL(retain) - NLL(forget)
- IDK     "I don't know." tuning: NLL(IDK | forget q) + lambda NLL(retain)
- NPO     (Zhang et al., 2024):   -(2/beta) E[log sigmoid(-beta (log p_theta(y|x) - log p_ref(y|x)))] + lambda NLL(retain)
- SimNPO  (Fan et al., 2024):     -(2/beta) E[log sigmoid(beta (-log p_theta(y|x) / |y| - gamma))] + lambda NLL(retain)

SimNPO follows the authors' code, which puts the margin gamma inside the
product with beta. Fan et al. write it outside,
log sigmoid(-(beta/|y|) log p_theta(y|x) - gamma); the two agree at gamma = 0,
the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .method import Method, nll, row_mean, sequence_logprob

IDK_ANSWER = "I don't know."


class GA(Method):
    name = "ga"

    def loss(self, model, forget, retain):
        f = nll(model, forget)
        return -f, {"forget_loss": f.item()}


class GD(Method):
    name = "gd"

    def loss(self, model, forget, retain):
        f, r = nll(model, forget), nll(model, retain)
        return self.cfg.lam * r - f, {"forget_loss": f.item(), "retain_loss": r.item()}


class IDK(Method):
    """Its forget batch holds the forget questions with IDK_ANSWER in place of their answers."""
    name = "idk"
    needs_answers = False

    def answers(self, idx):
        return [IDK_ANSWER] * len(idx)

    def loss(self, model, forget, retain):
        f, r = nll(model, forget), nll(model, retain)
        return f + self.cfg.lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


class NPO(Method):
    """Its reference, log p_ref(y|x), is the model's before unlearning, computed once at the start
    (the same numbers as a frozen copy's at every step, up to precision)."""
    name = "npo"

    def start(self, curves, y0=None):
        questions, answers = [r["question"] for r in self.rows], [r["answer"] for r in self.rows]
        self.reference = torch.tensor(self.logprobs(questions, answers), dtype=torch.float32, device=self.model.device)

    def state_dict(self):
        return {"reference": self.reference}

    def load_state_dict(self, state):
        self.reference = state["reference"].to(self.model.device)

    def batch(self, idx):
        return {**super().batch(idx), "reference": self.reference[idx]}  # row by row, as the batch is shared

    def loss(self, model, forget, retain):
        logp, _ = sequence_logprob(model, forget)
        beta = self.cfg.npo_beta
        f = -(2 / beta) * row_mean(F.logsigmoid(-beta * (logp - forget.batch["reference"])), forget)
        r = nll(model, retain)
        return f + self.cfg.lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


class SimNPO(Method):
    name = "simnpo"

    def loss(self, model, forget, retain):
        logp, length = sequence_logprob(model, forget)
        beta, gamma = self.cfg.simnpo_beta, self.cfg.simnpo_gamma
        f = -(2 / beta) * row_mean(F.logsigmoid(beta * (-logp / length.clamp(min=1) - gamma)), forget)
        r = nll(model, retain)
        return f + self.cfg.lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


BASELINES = {m.name: m for m in (GA, GD, IDK, NPO, SimNPO)}
