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

from .model import nll, row_mean
from .qa import sequence_logprob

IDK_ANSWER = "I don't know."


def ga_loss(model, forget, retain, lam, **_):
    f = nll(model, forget)
    return -f, {"forget_loss": f.item()}


def gd_loss(model, forget, retain, lam, **_):
    f, r = nll(model, forget), nll(model, retain)
    return lam * r - f, {"forget_loss": f.item(), "retain_loss": r.item()}


def idk_loss(model, forget, retain, lam, **_):
    """`forget` here is the batch whose answers were replaced by IDK_ANSWER."""
    f, r = nll(model, forget), nll(model, retain)
    return f + lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


def npo_loss(model, forget, retain, lam, *, ref_logprob: torch.Tensor, beta: float = 0.1, **_):
    logp, _ = sequence_logprob(model, forget)
    f = -(2 / beta) * row_mean(F.logsigmoid(-beta * (logp - ref_logprob)), forget)
    r = nll(model, retain)
    return f + lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


def simnpo_loss(model, forget, retain, lam, *, beta: float = 2.5, gamma: float = 0.0, **_):
    logp, length = sequence_logprob(model, forget)
    f = -(2 / beta) * row_mean(F.logsigmoid(beta * (-logp / length.clamp(min=1) - gamma)), forget)
    r = nll(model, retain)
    return f + lam * r, {"forget_loss": f.item(), "retain_loss": r.item()}


LOSSES = {"ga": ga_loss, "gd": gd_loss, "idk": idk_loss, "npo": npo_loss, "simnpo": simnpo_loss}
