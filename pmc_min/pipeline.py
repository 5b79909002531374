"""A run's phases, in the order run.py's main() calls them: the starting model, the
evaluations (greedy ROUGE-L, TOFU's metrics, the robustness attacks), training, and
the results. `settle.settle` makes the `Run` they read (every input checked, every
default merged) before any of them."""

from __future__ import annotations

import errno
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from . import attacks, checkpoint, distributed, files, lora, open_unlearning, own_data, report, tiny, tofu
from .checkpoint import load as load_model
from .data import load_split
from .errors import Interrupted, NonFiniteLoss, Terminated, UserError
from .evaluate import evaluate, fluency_nll
from .files import atomic_write_text, write_json
from .resume import damaged, latest_state, load_state, save_state
from .sample import Sampling
from .settle import Run
from .train import TrainingState, finetune, unlearn


class Stopwatch:
    """Wall seconds of each stage of a run, and of the whole."""

    def __init__(self):
        self.start = self.last = time.time()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.time()
        self.stages[stage], self.last = round(now - self.last, 1), now

    @property
    def total(self) -> float:
        return round(time.time() - self.start, 1)


def starting_point(run: Run):
    """(model, tokenizer, training state or None, `before` results or None): where the last
    complete epoch left a resumed run, else the model fine-tuned on TOFU first if asked."""
    cfg = run.config
    latest = latest_state(run.out) if cfg.resume else None
    if latest is not None:
        model, tokenizer, state = load_state(latest, device=cfg.device)
        try:
            before = json.loads((run.out / "before.json").read_text())
        except (OSError, ValueError) as e:
            raise damaged(run.out / "before.json", e) from None
        print(f"Resuming from {latest} (epoch {state.epoch} of {cfg.unlearn.epochs}).")
        return model, run.prompted(tokenizer), state, before
    folder = run.model_dir
    if cfg.finetune.epochs > 0:
        folder = run.finetuned_dir = finetuned(run, run.data.full_rows, "the model fine-tuned on TOFU")
    model, tokenizer = run.load(folder)
    run.log(f"{cfg.model}: {model.num_parameters():,} parameters on {cfg.device}; data {run.data_dir}")
    return model, tokenizer, None, None


def fingerprint(inputs) -> str:
    """A cache key: the hash of everything that goes into a cached result, as canonical JSON."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def finetuned_folder(run: Run, rows: list[dict], epochs: int | None = None) -> tuple[Path, dict]:
    """(the cache folder of run.model_dir fine-tuned on rows, built or not; its recipe)."""
    cfg = run.config
    ft = {**asdict(cfg.finetune), **({} if epochs is None else {"epochs": epochs})}
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(run.model_dir).iterdir()
                     if f.suffix in (".safetensors", ".json"))
    recipe = {"model": str(Path(run.model_dir).resolve()), "weights": weights, "finetune": ft, "chat": cfg.chat,
              "seed": cfg.seed, "rows": [(r["question"], r["answer"]) for r in rows]}
    return files.cache_root() / "finetuned" / f"{Path(run.model_dir).name}-{fingerprint(recipe)}", recipe


def start_folder(run: Run) -> Path:
    """The model unlearning starts from: the fine-tuned one, or the model itself."""
    return finetuned_folder(run, run.data.full_rows)[0] if run.config.finetune.epochs > 0 else Path(run.model_dir)


def finetuned(run: Run, rows: list[dict], what: str, epochs: int | None = None) -> Path:
    """The folder of run.model_dir fine-tuned on rows with the run's recipe, built once and
    cached under the hash of everything that goes into it, so that every method (and the
    retain-only reference) starts from the same model."""
    cfg, (folder, recipe) = run.config, finetuned_folder(run, rows, epochs)
    ft = recipe["finetune"]
    if (folder / "READY").is_file():
        run.log(f"Using {what}, cached in {folder}.")
        return folder

    def build(tmp: Path) -> None:
        model, tokenizer = run.load(run.model_dir)
        run.log(f"Building {what}: {len(rows)} QA, {ft['epochs']} epochs (cached in {folder}) ...")
        finetune(model, tokenizer, rows, epochs=ft["epochs"], lr=ft["lr"], batch_size=ft["batch_size"],
                 grad_accum=ft["grad_accum"], max_length=ft["max_length"], seed=cfg.seed, progress=cfg.progress,
                 train_dtype=ft["train_dtype"])
        checkpoint.save(model, tokenizer, tmp)
        (tmp / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "rows"} | {
            "rows": len(rows)}, indent=1) + "\n")

    return files.build_once(folder, build)


class Evaluations:
    """The evaluations a run asked for, their fixed inputs prepared once."""

    def __init__(self, run: Run, tokenizer):
        self.run, evals, rows = run, run.config.evals, run.data.forget_rows
        self.perturbed = (load_split(run.data_dir, f"{run.config.split}_perturbed")[:len(rows)]
                          if "mcq" in evals else None)
        self.token_set = (attacks.forget_tokens(tokenizer, [r["answer"] for r in rows], run.data.probe)
                          if "overunlearn" in evals else None)
        self.reference_tr = reference_truth_ratios(run) if "tofu" in evals else None

    def __call__(self, model, tokenizer, base_probs=None, before=None) -> dict:
        run, cfg = self.run, self.run.config
        max_length, sets = cfg.unlearn.max_length, run.data.sets
        result, greedy = evaluate(model, tokenizer, sets, max_length=max_length)
        result["answers"] = {"forget": greedy["forget"]}  # every greedy forget answer, in the split's order
        questions = sets["forget"][0]
        scorer, _ = load_model(run.model_dir, device=cfg.device)  # the model before any TOFU fine-tuning
        # room for the whole answer: it was written within max_length, and its end token comes on top
        result["fluency_nll"] = {"forget": fluency_nll(scorer, tokenizer, questions, greedy["forget"], 2 * max_length)}
        del scorer
        if "tofu" in cfg.evals:
            known = {q: g for name, (qs, _) in sets.items() if name != "forget_paraphrased"
                     for q, g in zip(qs, greedy[name])}
            result["tofu"] = tofu.evaluate(model, tokenizer, run.data.tofu_sets, max_length, self.reference_tr, known,
                                           open_unlearning=True)
        if set(cfg.evals) - {"tofu"}:
            result["robustness"] = robustness(model, tokenizer, run, self.perturbed, self.token_set, base_probs)
        return result


def eval_sampling(run: Run) -> dict:
    """The sampled evaluations' settings: samples per question, how they are drawn, the seed."""
    cfg = run.config
    return dict(m=cfg.eval_samples, sampling=Sampling(cfg.eval_temperature, cfg.unlearn.top_p, cfg.unlearn.top_k),
                max_length=cfg.unlearn.max_length, seed=cfg.seed)


class OwnDataEvaluations:
    """The evaluation of a run on your own data (own_data.similarity_to_y0): against the
    model's own answers before unlearning, and against the ground truth where --forget-answers
    gives it. That file is read here, and nowhere else."""

    def __init__(self, run: Run, tokenizer):
        self.run, cfg = run, run.config
        self.questions = [r["question"] for r in run.data.forget_rows]
        rows = run.data.retain_rows
        # self-distilled retain: every question is answered before unlearning, and the answers are its targets
        self.retain = rows if "answer" not in rows[0] else [rows[i] for i in own_data.spread(len(rows))]
        self.answers = own_data.read_answers(cfg.forget_answers, self.questions) if cfg.forget_answers else None

    def __call__(self, model, tokenizer, base_probs=None, before=None) -> dict:
        has_answers = "answer" in self.retain[0]
        return own_data.similarity_to_y0(
            model, tokenizer, self.questions, [r["question"] for r in self.retain], before and before["y0"],
            **eval_sampling(self.run), answers=self.answers,
            retain_answers=[r["answer"] for r in self.retain] if has_answers and self.answers else None)


def evaluate_before(run: Run, evaluations: Evaluations, model, tokenizer) -> dict:
    """The evaluation before unlearning. A run that starts from a cached fine-tuned model keeps it
    beside that model, under the hash of every input of the evaluation, so the next method on the
    same model with the same evaluations reuses it."""
    cfg, data = run.config, run.data
    path = None
    if run.finetuned_dir is not None:
        inputs = {"evals": cfg.evals, "sets": data.sets, "max_length": cfg.unlearn.max_length,
                  "tofu_sets": data.tofu_sets, "reference": evaluations.reference_tr, "samples": cfg.eval_samples,
                  "sampling": [cfg.eval_temperature, cfg.unlearn.top_p, cfg.unlearn.top_k], "seed": cfg.seed,
                  "forget": [(r["question"], r["answer"]) for r in data.forget_rows], "probe": data.probe,
                  "perturbed": evaluations.perturbed, "data_dir": str(run.data_dir), "chat": cfg.chat,
                  "scorer": str(run.model_dir)}
        path = run.finetuned_dir / "before" / f"{fingerprint(inputs)}.json"
        if path.is_file():
            run.log(f"Using the evaluation before unlearning cached in {path}.")
            return json.loads(path.read_text())
    run.log("Evaluating before unlearning ...")
    before = evaluations(model, tokenizer)
    if path is not None and distributed.main_rank():
        path.parent.mkdir(exist_ok=True)
        write_json(path, before)
    return before


def overunlearn_base(run: Run, ev: Evaluations, tokenizer, before: dict):
    """(base probabilities, their name) of the over-unlearning probe: the paper's retain-only
    reference where the tiny default has built it, else the model before unlearning."""
    cfg = run.config
    before_probs = before.get("robustness", {}).get("overunlearn", {}).get("probs")
    reference_dir = tiny.cache_dir() / f"reference-{cfg.split}"
    if ("overunlearn" in cfg.evals and cfg.tiny_default and not cfg.reference
            and (reference_dir / "READY").is_file()):
        reference, _ = load_model(reference_dir, device=cfg.device)
        return attacks.token_probs(reference, tokenizer, run.data.probe, ev.token_set), "retain-only reference"
    return before_probs, "model before unlearning"


def train(run: Run, model, tokenizer, state, before: dict):
    """(model, tokenizer, curves) after unlearning, or the retain-only reference with --reference. On your
    own data, PMC's y0 and any self-distilled retain targets are the greedy answers before unlearning."""
    cfg, retain_rows, y0 = run.config, run.data.retain_rows, None
    if cfg.own_data:
        y0 = before["y0"]["forget"]
        if "answer" not in retain_rows[0]:
            retain_rows = [{"question": r["question"], "answer": a} for r, a in zip(retain_rows, before["y0"]["retain"])]

    def on_epoch_end(st: TrainingState, engine) -> None:
        if cfg.save_every and (st.epoch % cfg.save_every == 0 or st.final):
            save_state(run.out, model, tokenizer, st, engine)

    try:
        if cfg.reference:
            run.log("Training the retain-only reference model ...")
            with distributed.rank_zero_first():
                return *reference_model(run), {}
        what = cfg.forget_questions or cfg.split
        run.log(f"Unlearning {what} ({len(run.data.forget_rows)} questions) with {cfg.method} ...")
        resumed_fluent = state is not None and cfg.unlearn.reward == "fluent"  # its judge: the starting model
        return model, tokenizer, unlearn(model, tokenizer, run.data.forget_rows, retain_rows, cfg.unlearn, y0=y0,
                                         progress=cfg.progress, on_epoch_end=on_epoch_end, resume=state,
                                         before=run.load(start_folder(run))[0] if resumed_fluent else None)
    except NonFiniteLoss as e:
        kept = latest_state(run.out)
        raise NonFiniteLoss(f"{str(e)[:-1]}; nothing non-finite was saved" + (
            f", and the last good checkpoint, {kept}, is kept (--resume {run.out} retries from it)." if kept
            else ", and no checkpoint was written yet.")) from None


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def stopped(run: Run | None, error: BaseException, started: float) -> UserError:
    """One sentence for a run that stopped on Ctrl-C, SIGTERM or a full disk: what is kept, and how to go on."""
    if isinstance(error, KeyboardInterrupt):
        what, code = ("Terminated", 143) if isinstance(error, Terminated) else ("Interrupted", 130)
    if run is None:
        if isinstance(error, KeyboardInterrupt):
            return Interrupted(f"{what} before the run started; nothing of it was written.", code)
        return UserError(f"No space left on device ({error}) before the run started; nothing of it was written.")
    kept = latest_state(run.out) if (run.out / "checkpoints" / "LATEST").is_file() else None
    results = run.out / "results.json"
    parts = [f"the last complete checkpoint, {kept.name}"] if kept else []
    if results.is_file() and results.stat().st_mtime >= started:
        parts.append("results.json")
    keeps = f"{' and '.join(parts)} {'is' if len(parts) == 1 else 'are'} kept" if parts else "no checkpoint is kept"
    if isinstance(error, KeyboardInterrupt):
        return Interrupted(f"{what}; {keeps}: continue with python run.py --resume {run.out}", code)
    where = f" writing {error.filename}" if error.filename else ""
    return UserError(f"No space left on device{where}; {keeps}: free some space, then continue with "
                     f"python run.py --resume {run.out}")


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


def write_results(run: Run, model, tokenizer, before: dict, after: dict, curves: dict, clock) -> None:
    """results.json, the plots and the model; `clock` holds the wall seconds of each stage (`stages`)
    and of the whole run (`total`)."""
    cfg, out = run.config, run.out
    results = {"method": "reference-retain" if cfg.reference else cfg.method, "model": cfg.model,
               "split": cfg.split, "data_dir": run.data_dir and str(run.data_dir),
               **({"forget_questions": cfg.forget_questions, "retain": cfg.retain,
                   "forget_answers": cfg.forget_answers} if cfg.own_data else {}),
               "config": {**asdict(cfg.unlearn), "preset": cfg.preset, "chat": cfg.chat,
                          "finetune": asdict(cfg.finetune), "device": cfg.device, "protocol": cfg.protocol,
                          "eval_samples": cfg.eval_samples, "eval_temperature": cfg.eval_temperature,
                          "limit": cfg.limit, "full_eval": cfg.full_eval, "reference_model": cfg.reference_model},
               "before": before, "after": after, "wall_seconds": clock.total, "stage_seconds": clock.stages,
               "curves": curves}
    write_json(out / "results.json", results, indent=1)  # first: it is small, and it is what a run is for
    if lora.attached(model):
        lora.write_outputs(model, tokenizer, out, base=str(start_folder(run)))
    else:
        checkpoint.save_atomic(model, tokenizer, out / "model")
    plotted = bool(curves) and report.plot_curves(curves, out / "curves.png")
    if "overunlearn" in after.get("robustness", {}):
        report.plot_overunlearn(after["robustness"]["overunlearn"], out / "overunlearn.png")
    print(report.markdown_table(before, after))
    print(f"\n{results['method']} on {cfg.model}, {cfg.forget_questions or cfg.split}: {results['wall_seconds']:.0f} s. "
          f"Wrote {out / 'results.json'}{', curves.png' if plotted else ''} and the model in {out / 'model'}.")


def robustness(model, tokenizer, run: Run, perturbed_rows: list[dict] | None, token_set, base_probs=None) -> dict:
    """The requested robustness evaluations of one model (attacks.py)."""
    cfg, forget_rows = run.config, run.data.forget_rows
    evals, sampling = cfg.evals, eval_sampling(run)
    questions, answers = [r["question"] for r in forget_rows], [r["answer"] for r in forget_rows]
    out = {}
    if "leakage" in evals:
        out["leakage"] = attacks.leakage(model, tokenizer, questions, answers, **sampling)
    if "prefill" in evals:
        out["prefill"] = attacks.prefill(model, tokenizer, questions, answers, **sampling)
    if "overunlearn" in evals:
        probs = attacks.token_probs(model, tokenizer, run.data.probe, token_set)
        out["overunlearn"] = attacks.overunlearn(probs, base_probs if base_probs is not None else probs)
        out["overunlearn"]["probs"] = probs
    if "mcq" in evals:
        out["mcq"] = attacks.mcq(model, tokenizer, perturbed_rows, cfg.unlearn.max_length)
    if "factleak" in evals:
        known = run.data.facts or {}  # the synthetic data knows every answer's facts
        rows = [{**r, "facts": known.get(r["question"])} for r in forget_rows]
        out["factleak"] = attacks.factleak(model, tokenizer, rows, **sampling)
    return out


def reference_truth_ratios(run: Run) -> list[float]:
    """The retain-only reference model's forget truth ratios (TOFU's forget quality compares
    with them), computed once per run."""
    cfg = run.config
    if cfg.reference_logs:
        return open_unlearning.reference_truth_ratios(cfg.reference_logs)
    path = run.out / "reference_truth_ratio.json"
    if path.is_file():
        return json.loads(path.read_text())
    folder = checkpoint.resolve(cfg.reference_model) if cfg.reference_model else reference_folder(run)
    reference, tokenizer = run.load(folder)
    ratios = tofu.forget_truth_ratios(reference, tokenizer, run.data.tofu_sets["forget"], cfg.unlearn.max_length)
    atomic_write_text(path, json.dumps(ratios) + "\n")
    return ratios


def reference_model(run: Run):
    """The model that never saw the forget split: for the tiny default the same recipe
    on everything else; otherwise the base model fine-tuned on the retain rows (cached)."""
    return run.load(reference_folder(run))


def reference_folder(run: Run) -> Path:
    cfg = run.config
    if cfg.tiny_default:
        return tiny.build_reference(cfg.split, device=cfg.device, progress=cfg.progress)
    return finetuned(run, run.data.retain_rows, "the retain-only reference model", epochs=max(1, cfg.finetune.epochs))
