"""The losses every method and score is built from: the next-token NLL of labelled tokens."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def next_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, T): at position t the label of token t+1, which it predicts; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The NLL of each token, (B, T-1) in float32, and the mask of those counted: token t+1 is
    predicted from position t, and labels of -100 (prompt, padding) count for nothing (0).
    The logits are read row-major as they lie, (B*T, V), with no sliced copy: on a 2-core CPU at a
    49k vocabulary this is 3.2x faster than cross-entropy over the transposed (B, V, T) layout,
    forward and backward, and 15x closer to a float64 reference (docs/benchmarks.md)."""
    B, T, V = logits.shape
    targets = next_targets(labels)
    nll = F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), ignore_index=-100,
                          reduction="none")
    return nll.view(B, T)[:, :-1], targets[:, :-1] != -100


def labelled_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """next_token_nll(model(input_ids, attention_mask), labels), with the head run only at the
    positions whose next token is labelled: on a TOFU batch about half the positions are prompt or
    padding, and at a 262k vocabulary the head is most of a training step (docs/benchmarks.md).
    The same values up to float rounding (a matrix product over fewer rows)."""
    targets = next_targets(labels)
    counted = targets != -100
    logits = model(input_ids, attention_mask, keep=counted)  # (K, V)
    nll = torch.zeros(counted.shape, dtype=torch.float32, device=logits.device)
    nll[counted] = F.cross_entropy(logits.float(), targets[counted], reduction="none")
    return nll[:, :-1], counted[:, :-1]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean",
                   total: float | None = None) -> torch.Tensor:
    """Next-token NLL averaged over the counted tokens; reduction='none' gives one mean per row.
    total (deprecated): divide the sum by it instead of the counted tokens."""
    nll, counted = next_token_nll(logits, labels)
    if reduction == "none":
        return nll.sum(-1) / counted.sum(-1).clamp(min=1)
    if total is not None:
        warnings.warn("causal_lm_loss(total=) is deprecated and will be removed; divide "
                      "next_token_nll(logits, labels)[0].sum() by your own count.", DeprecationWarning, stacklevel=2)
        return nll.sum() / max(total, 1)
    return nll.sum() / counted.sum().clamp(min=1)
