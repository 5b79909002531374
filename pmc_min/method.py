"""An unlearning method, as the training loop (`train.unlearn`) sees it.

Each method is one object that owns its setup (PMC's y0, NPO's reference), its forget
batch, its loss and what it logs, as open-unlearning's trainers each override one
`compute_loss`. The loop calls the same methods on all of them: `pmc.PMC` and
`baselines.GA`, `GD`, `IDK`, `NPO` and `SimNPO`.

Losses are means over the micro-batch. Under torchrun a loss sees one rank's `Share` of
it, whose means divide by the whole micro-batch's counts (`engine.Share`), so `nll` and
`row_mean` below are the only places where a loss divides.
"""

from __future__ import annotations

import torch

from .config import UnlearnConfig
from .curves import Curves
from .engine import Share
from .model import Transformer
from .qa import answer_logprobs, answer_nll, encode_rows, token_nll
from .tokenizer import Tokenizer


def nll(model: Transformer, share: Share) -> torch.Tensor:
    """The mean NLL of the micro-batch's answer tokens (this rank's part of it)."""
    per_token, _ = token_nll(model, share.batch)
    return per_token.sum() / max(share.tokens, 1)


def row_mean(values: torch.Tensor, share: Share) -> torch.Tensor:
    """The mean over the micro-batch's rows of one value per row (this rank's part of it)."""
    return values.sum() / share.rows


def sequence_logprob(model: Transformer, share: Share) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(answer | question), answer tokens), one per row of the share's batch."""
    total, count = answer_nll(model, share.batch)
    return -total, count


class Method:
    """The interface of an unlearning method; the defaults are a baseline's, which trains on
    the forget questions with their ground-truth answers."""
    name = ""
    kind = "forget"  # what `unlearn(on_batch=...)` calls this method's forget batches
    draws = False  # samples from the current weights before its batches (PMC): the loop refreshes them
    needs_answers = True  # trains on the forget answers (not PMC, not IDK)

    def __init__(self, model: Transformer, tokenizer: Tokenizer, rows: list[dict], cfg: UnlearnConfig):
        self.model, self.tokenizer, self.rows, self.cfg = model, tokenizer, rows, cfg

    def start(self, curves: Curves, y0: list[str] | None = None) -> None:
        """Before the first epoch of a fresh run."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method (plain values and tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def prepare(self, idx: list[int], epoch: int, curves: Curves) -> None:
        """Before the micro-batch of forget questions idx, on every rank alike."""

    def answers(self, idx: list[int]) -> list[str]:
        return [self.rows[q]["answer"] for q in idx]

    def batch(self, idx: list[int]) -> dict:
        """The forget batch of questions idx."""
        rows = [{"question": self.rows[q]["question"], "answer": a} for q, a in zip(idx, self.answers(idx))]
        return encode_rows(self.tokenizer, rows, self.cfg.max_length, self.model.device)

    def loss(self, model: Transformer, forget: Share, retain: Share) -> tuple[torch.Tensor, dict]:
        """(the loss of one micro-batch, the parts it logs)."""
        raise NotImplementedError

    def monitor(self) -> dict:
        """What the curves log at the end of each epoch beside the ground-truth forget NLL."""
        return {}

    def result(self) -> dict:
        """What the run's curves add at the end."""
        return {}

    def logprobs(self, questions: list[str], answers: list[str]) -> list[float]:
        """log p(answer | question) under the current weights."""
        return answer_logprobs(self.model, self.tokenizer, questions, answers, self.cfg.max_length,
                               self.cfg.batch_size)
