"""Unlearn a TOFU forget split with PMC (or a baseline) and evaluate before and after.

    python run.py                                   # the embedded tiny default, minutes on a CPU
    python run.py --model phi-1_5 --data-dir ../shared/data/tofu   # the paper's Phi-1.5 setting (GPU)

Writes <out>/results.json (before/after unlearn quality, utility and ROUGE-L
recall per split, the config, the training curves and the wall time),
<out>/curves.png when matplotlib is installed, and the unlearned model in
HF's layout under <out>/model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

import pmc_min
from pmc_min import checkpoint, tiny
from pmc_min.data import FORGET_SPLITS, RETAIN_OF, load_split, resolve_data_dir
from pmc_min.evaluate import SPLITS, eval_sets, evaluate
from pmc_min.train import METHODS, UnlearnConfig, finetune, unlearn

# The paper's Phi-1.5 configuration is UnlearnConfig's default; the tiny
# default differs where a 4M-parameter model trained from scratch needs it.
PRESETS = {
    "tiny": dict(lr=3e-4, batch_size=20, grad_accum=1, max_length=96),
}
FINETUNE = {  # TOFU's fine-tuning before unlearning
    "tiny": dict(epochs=0, lr=1e-3, batch_size=32, max_length=96),
    "default": dict(epochs=5, lr=2e-5, batch_size=32, max_length=256),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (built here), phi-1_5, a hub repo id, or a local folder")
    p.add_argument("--method", default="pmc", choices=METHODS)
    p.add_argument("--split", default="forget10", choices=FORGET_SPLITS)
    p.add_argument("--data-dir", help="folder of TOFU JSON Lines files (default: the tiny model's own data for "
                                      "--model tiny, else the hub dataset locuslab/TOFU)")
    p.add_argument("--out", help="output folder (default: runs/<model>-<method>-<split>)")
    p.add_argument("--finetune-epochs", type=int, help="TOFU fine-tuning on `full` before unlearning "
                                                       "(default 5; 0 for the tiny default, which already knows it)")
    p.add_argument("--epochs", type=int, help="unlearning epochs (40)")
    p.add_argument("--lr", type=float, help="unlearning learning rate (1e-5; tiny 3e-4)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int, help="forget questions per micro-batch (16; tiny 20)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (4; tiny 1)")
    p.add_argument("--max-length", type=int, help="prompt + answer tokens (200; tiny 96)")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="weight of the retain loss (1.5)")
    p.add_argument("--n", dest="n_samples", type=int, help="samples per forget question (5)")
    p.add_argument("--temperature", type=float, help="sampling temperature (1.25)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (0.95)")
    p.add_argument("--top-k", type=int, help="top-k filter, 0 for none (50, as HF generate's default)")
    p.add_argument("--min-len", type=int, help="length penalty below this many words (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full-eval", action="store_true", help="evaluate the whole retain split, not 400 rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def unlearn_config(args, preset: str) -> UnlearnConfig:
    cfg = dict(PRESETS.get(preset, {}))
    for f in fields(UnlearnConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            cfg[f.name] = value
    if cfg.get("top_k") == 0:
        cfg["top_k"] = None
    cfg = UnlearnConfig(**cfg)
    cfg.validate()
    return cfg


def markdown_table(before: dict, after: dict) -> str:
    rows = ["| | unlearn quality | utility | " + " | ".join(SPLITS) + " |",
            "|---|---|---|" + "---|" * len(SPLITS)]
    for name, r in (("before", before), ("after", after)):
        recall = " | ".join(f"{r['rouge_l_recall'][s]:.3f}" for s in SPLITS)
        rows.append(f"| {name} | {r['unlearn_quality']:.1f} | {r['utility']:.1f} | {recall} |")
    return "\n".join(rows)


def plot_curves(curves: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot(curves["step"], curves["picked_rouge_l"])
    ax[0].set(title="mean ROUGE-L of picks vs y0", xlabel="optimizer step")
    ax[1].plot(curves["step"], curves["retain_loss"])
    ax[1].set(title="retain NLL", xlabel="optimizer step")
    ax[2].plot(curves["gt_forget_nll_epoch"], curves["gt_forget_nll"], "o-")
    ax[2].set(title="ground-truth forget NLL (monitoring only)", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    preset = "tiny" if args.model == "tiny" else "default"
    cfg = unlearn_config(args, preset)
    ft = dict(FINETUNE[preset])
    if args.finetune_epochs is not None:
        ft["epochs"] = args.finetune_epochs
    if ft["epochs"] < 0:
        raise pmc_min.UserError("--finetune-epochs must not be negative.")
    log = (lambda *a: None) if args.no_progress else print
    progress = not args.no_progress
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pmc_min.UserError("--device cuda was asked for, but torch sees no CUDA GPU.")

    # Inputs first, heavy work after: data files, then the model.
    if args.model == "tiny":
        model_dir, tiny_data = tiny.build(device=args.device, progress=progress, log=print)
        data_dir = Path(args.data_dir) if args.data_dir else tiny_data
    else:
        model_dir = checkpoint.resolve(args.model)
        data_dir = resolve_data_dir(args.data_dir)
    data_dir = resolve_data_dir(data_dir)
    forget_rows = load_split(data_dir, args.split)
    retain_rows = load_split(data_dir, RETAIN_OF[args.split])
    sets = eval_sets(data_dir, args.split, full=args.full_eval)
    full_rows = load_split(data_dir, "full") if ft["epochs"] > 0 else None
    model, tokenizer = pmc_min.load(model_dir, device=args.device)
    log(f"{args.model}: {model.num_parameters():,} parameters on {args.device}; data {data_dir}")

    if ft["epochs"] > 0:
        log(f"Fine-tuning on TOFU full ({len(full_rows)} QA) for {ft['epochs']} epochs ...")
        finetune(model, tokenizer, full_rows, epochs=ft["epochs"], lr=ft["lr"], batch_size=ft["batch_size"],
                 max_length=ft["max_length"], seed=args.seed, progress=progress)

    log("Evaluating before unlearning ...")
    before = evaluate(model, tokenizer, sets, max_length=cfg.max_length)
    log(f"Unlearning {args.split} ({len(forget_rows)} QA) with {args.method} ...")
    torch.manual_seed(args.seed)
    curves = unlearn(model, tokenizer, forget_rows, retain_rows, cfg, progress=progress)
    log("Evaluating after unlearning ...")
    after = evaluate(model, tokenizer, sets, max_length=cfg.max_length)

    name = Path(args.model).name if args.model not in checkpoint.ALIASES else args.model
    out = Path(args.out or f"runs/{name}-{args.method}-{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    pmc_min.save(model, tokenizer, out / "model")
    results = {"method": args.method, "model": args.model, "split": args.split, "data_dir": str(data_dir),
               "config": {**asdict(cfg), "finetune": ft, "device": args.device},
               "before": before, "after": after, "wall_seconds": round(time.time() - start, 1), "curves": curves}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_nan_safe) + "\n")
    plotted = plot_curves(curves, out / "curves.png")
    print(markdown_table(before, after))
    print(f"\n{args.method} on {args.model}, {args.split}: {results['wall_seconds']:.0f} s. "
          f"Wrote {out / 'results.json'}{', curves.png' if plotted else ''} and the model in {out / 'model'}.")
    return 0


def _nan_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except pmc_min.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
