"""What a run reports: the markdown table it prints, and its figures (with the
optional matplotlib). results.json itself is written by `files.write_json`."""

from __future__ import annotations

from pathlib import Path

from .evaluate import SPLITS


def markdown_table(before: dict, after: dict) -> str:
    if "similarity_to_y0" in after:
        return similarity_table(before, after)
    rows = ["| | unlearn quality | utility | " + " | ".join(SPLITS) + " |",
            "|---|---|---|" + "---|" * len(SPLITS)]
    for name, r in (("before", before), ("after", after)):
        recall = " | ".join(f"{r['rouge_l_recall'][s]:.3f}" for s in SPLITS)
        rows.append(f"| {name} | {r['unlearn_quality']:.1f} | {r['utility']:.1f} | {recall} |")
    if "tofu" in after:
        rows += ["", "| | forget quality (KS p-value) | model utility |", "|---|---|---|"]
        for name, r in (("before", before), ("after", after)):
            fq = r["tofu"].get("forget_quality")
            rows.append(f"| {name} | {'-' if fq is None else f'{fq:.3g}'} | {r['tofu']['model_utility']:.3f} |")
    return "\n".join(rows)


def similarity_table(before: dict, after: dict) -> str:
    """A run on your own data: ROUGE-L recall against the model's own answers before unlearning
    (y0), and against the ground truth where it was given for evaluation."""
    sim = after["similarity_to_y0"]
    head = ["forget vs y0", "retain vs y0", f"forget, max of {sim['samples_per_question']} samples vs y0"]
    keys = ["forget", "retain", "forget_max_of_samples"]
    truth = "ground_truth" in after
    if truth:
        head += ["forget vs truth"] + (["retain vs truth"] if "retain" in after["ground_truth"]["rouge_l_recall"]
                                       else []) + ["forget, max of samples vs truth"]
    rows = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, r in (("before", before), ("after", after)):
        cells = [r["similarity_to_y0"][k] for k in keys]
        if truth:
            gt = r["ground_truth"]
            cells += list(gt["rouge_l_recall"].values()) + [gt["leakage"]["mean_max_rouge_l_recall"]]
        rows.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(rows)


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when the optional `plot` extra is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(curves: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot(curves["step"], curves["picked_rouge_l"])
    ax[0].set(title="mean ROUGE-L of picks vs y0", xlabel="optimizer step")
    ax[1].plot(curves["step"], curves["retain_loss"])
    ax[1].set(title="retain NLL", xlabel="optimizer step")
    if any(v is not None for v in curves["gt_forget_nll"]):
        ax[2].plot(curves["gt_forget_nll_epoch"], curves["gt_forget_nll"], "o-")
        ax[2].set(title="ground-truth forget NLL (monitoring only)", xlabel="epoch")
    else:
        ax[2].set(title="ground-truth forget NLL: no answers given", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overunlearn(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    if not result.get("n_tokens"):
        return False
    edges, counts = result["histogram"]["edges"], result["histogram"]["counts"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge")
    ax.set(title="p_after(y_t|x) - p_base(y_t|x), forget tokens in unrelated text", xlabel="difference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
