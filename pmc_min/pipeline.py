"""A run's phases, in the order run.py's main() calls them: the starting model, the
evaluations (greedy ROUGE-L, TOFU's metrics, the robustness attacks), training, and
the results. run.py settles a `Run` (every input checked, every default merged)
before any of them."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import attacks, checkpoint, report, tiny, tiny_data, tofu
from .checkpoint import load as load_model
from .data import load_split
from .evaluate import evaluate
from .resume import atomic_write_text, latest_state, load_state, save_state
from .sample import Sampling
from .train import NonFiniteLoss, TrainingState, UnlearnConfig, finetune, unlearn
from .errors import UserError


def tiny_default(args) -> bool:
    """The embedded model on its own data."""
    return args.model == "tiny" and not args.data_dir


@dataclass
class Run:
    """Everything a run needs, settled before any heavy work."""
    args: argparse.Namespace
    preset: str
    cfg: UnlearnConfig
    finetuning: dict  # TOFU fine-tuning before unlearning: epochs, lr, batch_size, grad_accum, max_length
    chat: dict | None
    evals: list[str]
    eval_samples: int  # samples per forget question of leakage, prefill and factleak
    out: Path
    data_dir: Path
    model_dir: Path
    forget_rows: list[dict]
    retain_rows: list[dict]
    sets: dict
    full_rows: list[dict] | None
    tofu_sets: dict | None
    probe: list[str] | None

    @property
    def tiny_default(self) -> bool:
        return tiny_default(self.args)

    def log(self, *message) -> None:
        if not self.args.no_progress:
            print(*message)

    def load(self, folder):
        """A model and its tokenizer, prompted as the authors prompt this kind of model."""
        model, tokenizer = load_model(folder, device=self.args.device)
        return model, self.prompted(tokenizer)

    def prompted(self, tokenizer):
        if self.chat:
            tokenizer.with_system(**self.chat)
        return tokenizer


def starting_point(run: Run):
    """(model, tokenizer, training state or None, `before` results or None): where the last
    complete epoch left a resumed run, else the model fine-tuned on TOFU first if asked."""
    args = run.args
    latest = latest_state(run.out) if args.resume else None
    if latest is not None:
        model, tokenizer, state = load_state(latest, device=args.device)
        print(f"Resuming from {latest} (epoch {state.epoch} of {run.cfg.epochs}).")
        return model, run.prompted(tokenizer), state, json.loads((run.out / "before.json").read_text())
    if args.resume and (run.out / "finetuned" / "READY").is_file():
        return *run.load(run.out / "finetuned"), None, None
    model, tokenizer = run.load(run.model_dir)
    run.log(f"{args.model}: {model.num_parameters():,} parameters on {args.device}; data {run.data_dir}")
    ft = run.finetuning
    if ft["epochs"] > 0:
        run.log(f"Fine-tuning on TOFU full ({len(run.full_rows)} QA) for {ft['epochs']} epochs ...")
        finetune(model, tokenizer, run.full_rows, epochs=ft["epochs"], lr=ft["lr"], batch_size=ft["batch_size"],
                 grad_accum=ft["grad_accum"], max_length=ft["max_length"], seed=args.seed,
                 progress=not args.no_progress)
        checkpoint.build_once(run.out / "finetuned", lambda tmp: checkpoint.save(model, tokenizer, tmp))
    return model, tokenizer, None, None


class Evaluations:
    """The evaluations a run asked for, their fixed inputs prepared once."""

    def __init__(self, run: Run, tokenizer):
        self.run, evals, rows = run, run.evals, run.forget_rows
        self.perturbed = (load_split(run.data_dir, f"{run.args.split}_perturbed")[:len(rows)]
                          if "mcq" in evals else None)
        self.token_set = (attacks.forget_tokens(tokenizer, [r["answer"] for r in rows], run.probe)
                          if "overunlearn" in evals else None)
        self.reference_tr = (reference_truth_ratios(run) if "tofu" in evals
                             and (run.args.reference_model or run.tiny_default) else None)

    def __call__(self, model, tokenizer, base_probs=None) -> dict:
        run = self.run
        result = evaluate(model, tokenizer, run.sets, max_length=run.cfg.max_length)
        if "tofu" in run.evals:
            if self.reference_tr is None and run.args.reference:  # this run trained the reference itself
                self.reference_tr = tofu.forget_truth_ratios(model, tokenizer, run.tofu_sets["forget"],
                                                             run.cfg.max_length)
            result["tofu"] = tofu.evaluate(model, tokenizer, run.tofu_sets, run.cfg.max_length, self.reference_tr)
        if set(run.evals) - {"tofu"}:
            result["robustness"] = robustness(model, tokenizer, run, self.perturbed, self.token_set, base_probs)
        return result


def overunlearn_base(run: Run, ev: Evaluations, tokenizer, before: dict):
    """(base probabilities, their name) of the over-unlearning probe: the paper's retain-only
    reference where the tiny default has built it, else the model before unlearning."""
    before_probs = before.get("robustness", {}).get("overunlearn", {}).get("probs")
    reference_dir = tiny.cache_dir() / f"reference-{run.args.split}"
    if ("overunlearn" in run.evals and run.tiny_default and not run.args.reference
            and (reference_dir / "READY").is_file()):
        reference, _ = load_model(reference_dir, device=run.args.device)
        return attacks.token_probs(reference, tokenizer, run.probe, ev.token_set), "retain-only reference"
    return before_probs, "model before unlearning"


def train(run: Run, model, tokenizer, state):
    """(model, tokenizer, curves) after unlearning, or the retain-only reference with --reference."""
    args = run.args

    def on_epoch_end(st: TrainingState) -> None:
        if args.save_every and (st.epoch % args.save_every == 0 or st.final):
            save_state(run.out, model, tokenizer, st)

    try:
        if args.reference:
            run.log("Training the retain-only reference model ...")
            return *reference_model(run), {}
        run.log(f"Unlearning {args.split} ({len(run.forget_rows)} QA) with {args.method} ...")
        return model, tokenizer, unlearn(model, tokenizer, run.forget_rows, run.retain_rows, run.cfg,
                                         progress=not args.no_progress, on_epoch_end=on_epoch_end, resume=state)
    except NonFiniteLoss as e:
        kept = latest_state(run.out)
        raise UserError(f"{str(e)[:-1]}; " + (f"the last good checkpoint, {kept}, is kept (resume with "
                                f"--resume {run.out})." if kept else "no checkpoint was written yet.")) from None


def finish_overunlearn(after: dict, before: dict, base_probs, base: str) -> None:
    """Name the probe's base, add the shift unlearning itself caused, and keep the raw probabilities
    out of results.json."""
    ou = after.get("robustness", {}).get("overunlearn")
    if ou is not None:
        ou["base"] = base
        before_probs = before.get("robustness", {}).get("overunlearn", {}).get("probs")
        if base_probs is not before_probs:
            vs_before = attacks.overunlearn(ou["probs"], before_probs)
            ou["vs_before"] = {k: vs_before[k] for k in ("n_tokens", "mean", "std") if k in vs_before}
    for result in (before, after):
        result.get("robustness", {}).get("overunlearn", {}).pop("probs", None)


def write_results(run: Run, model, tokenizer, before: dict, after: dict, curves: dict, seconds: float) -> None:
    args, out = run.args, run.out
    checkpoint.save(model, tokenizer, out / "model")
    results = {"method": "reference-retain" if args.reference else args.method, "model": args.model,
               "split": args.split, "data_dir": str(run.data_dir),
               "config": {**asdict(run.cfg), "preset": run.preset, "chat": run.chat, "finetune": run.finetuning,
                          "device": args.device, "limit": args.limit, "full_eval": args.full_eval,
                          "reference_model": args.reference_model},
               "before": before, "after": after, "wall_seconds": round(seconds, 1), "curves": curves}
    report.write_json(out / "results.json", results, indent=1)
    plotted = bool(curves) and report.plot_curves(curves, out / "curves.png")
    if "overunlearn" in after.get("robustness", {}):
        report.plot_overunlearn(after["robustness"]["overunlearn"], out / "overunlearn.png")
    print(report.markdown_table(before, after))
    print(f"\n{results['method']} on {args.model}, {args.split}: {results['wall_seconds']:.0f} s. "
          f"Wrote {out / 'results.json'}{', curves.png' if plotted else ''} and the model in {out / 'model'}.")


def robustness(model, tokenizer, run: Run, perturbed_rows: list[dict] | None, token_set, base_probs=None) -> dict:
    """The requested robustness evaluations of one model (attacks.py)."""
    args, cfg, evals, forget_rows, data_dir = run.args, run.cfg, run.evals, run.forget_rows, run.data_dir
    sampling = dict(m=run.eval_samples, sampling=Sampling(args.eval_temperature, cfg.top_p, cfg.top_k), max_length=cfg.max_length,
                    seed=args.seed)
    questions, answers = [r["question"] for r in forget_rows], [r["answer"] for r in forget_rows]
    out = {}
    if "leakage" in evals:
        out["leakage"] = attacks.leakage(model, tokenizer, questions, answers, **sampling)
    if "prefill" in evals:
        out["prefill"] = attacks.prefill(model, tokenizer, questions, answers, **sampling)
    if "overunlearn" in evals:
        probs = attacks.token_probs(model, tokenizer, run.probe, token_set)
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


def reference_truth_ratios(run: Run) -> list[float]:
    """The retain-only reference model's forget truth ratios (TOFU's forget quality compares
    with them), computed once per run."""
    args = run.args
    path = run.out / "reference_truth_ratio.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.reference_model:
        folder = checkpoint.resolve(args.reference_model)
    else:  # the tiny default's own reference, built once
        folder = tiny.build_reference(args.split, device=args.device, progress=not args.no_progress)
    reference, tokenizer = run.load(folder)
    ratios = tofu.forget_truth_ratios(reference, tokenizer, run.tofu_sets["forget"], run.cfg.max_length)
    atomic_write_text(path, json.dumps(ratios) + "\n")
    return ratios


def reference_model(run: Run):
    """The model that never saw the forget split: for the tiny default the same recipe
    on everything else; otherwise the base model fine-tuned on the retain split."""
    args, ft, progress = run.args, run.finetuning, not run.args.no_progress
    if run.tiny_default:
        return run.load(tiny.build_reference(args.split, device=args.device, progress=progress))
    model, tokenizer = run.load(run.model_dir)
    finetune(model, tokenizer, run.retain_rows, epochs=max(1, ft["epochs"]), lr=ft["lr"], batch_size=ft["batch_size"],
             grad_accum=ft["grad_accum"], max_length=ft["max_length"], seed=args.seed, progress=progress)
    return model, tokenizer
