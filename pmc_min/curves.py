"""The training curves a run writes to results.json: per optimizer step the mean of
what its micro-batches logged, per epoch the monitoring numbers, and PMC's draws."""

from __future__ import annotations

CURVES = ("step", "epoch", "lr", "loss", "retain_loss", "forget_loss", "picked_rouge_l", "gt_forget_nll_epoch",
          "gt_forget_nll", "logp_y0", "draw_rewards", "draw_samples")


class Curves:
    """The training curves: per optimizer step, the mean of what its micro-batches logged."""

    def __init__(self, curves: dict):
        self.curves, self.parts = curves, {}

    def add(self, **values) -> None:
        for k, v in values.items():
            self.parts.setdefault(k, []).extend(v if isinstance(v, list) else [v])

    def step(self, step: int, epoch: int, lr: float) -> None:
        self.curves["lr"].append(lr)
        self.curves["step"].append(step)
        self.curves["epoch"].append(epoch)
        for k in ("loss", "retain_loss", "forget_loss", "picked_rouge_l"):
            values = self.parts.pop(k, [])
            self.curves[k].append(sum(values) / len(values) if values else None)

    def last(self) -> dict[str, str]:
        """The last optimizer step's loss (and PMC's picks' mean score), for the progress bar."""
        return {k: f"{self.curves[k][-1]:.3f}" for k in ("loss", "picked_rouge_l")
                if self.curves[k] and self.curves[k][-1] is not None}

    def epoch(self, epoch: int, gt_forget_nll: float | None, logp_y0: list[float] | None = None) -> None:
        self.curves["gt_forget_nll_epoch"].append(epoch)
        self.curves["gt_forget_nll"].append(gt_forget_nll)
        if logp_y0 is not None:
            self.curves.setdefault("logp_y0", []).append(logp_y0)

    def draws(self, epoch: int, n_questions: int, drawn: dict) -> None:
        """PMC's samples and their rewards (1 - score) in this epoch, one list per forget
        question, None for a question not resampled (docs/method.md §4: theory/practice.py)."""
        for key in ("draw_samples", "draw_rewards"):
            rows = self.curves.setdefault(key, [])
            rows.extend([None] * n_questions for _ in range(epoch - len(rows)))
        for q, (samples, scores) in drawn.items():
            self.curves["draw_samples"][epoch - 1][q] = samples
            self.curves["draw_rewards"][epoch - 1][q] = [1 - s for s in scores]
