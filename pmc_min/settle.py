"""A run settled before any heavy work: every input checked, the data read, the model found
(downloaded, converted or built if need be), and every default merged from what the
checkpoint is (`config.RunConfig.merged`). `Run` holds all of it; the pipeline's phases
read nothing else."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import checkpoint, distributed, lora, open_unlearning, own_data, tiny, tiny_data, tofu
from .checkpoint import load as load_model
from .config import CPU_PROTOCOL, MAX_SAMPLES, SLICED, RunConfig, sampling_problems
from .data import RETAIN_OF, load_split, resolve_data_dir, wikitext_probe
from .errors import UserError
from .evaluate import eval_sets
from .files import INPUTS, parameter_count, pinned_inputs, record_input, write_json
from .qa import prompt
from .tokenizer import Tokenizer, chat_format
from .train import run_length


@dataclass
class Data:
    """What a run reads: the forget and retain rows, the evaluation sets and the rest."""
    forget_rows: list[dict]
    retain_rows: list[dict]
    sets: dict  # {split: (questions, answers)} of the greedy ROUGE-L evaluation
    full_rows: list[dict] | None = None  # TOFU fine-tuning before unlearning
    tofu_sets: dict | None = None  # TOFU's metrics (--eval tofu)
    probe: list[str] | None = None  # the over-unlearning probe's unrelated text
    facts: dict | None = None  # the tiny data's facts of each answer (--eval factleak)


@dataclass
class Run:
    """Everything a run needs, settled before any heavy work."""
    config: RunConfig
    out: Path
    data_dir: Path
    model_dir: Path
    data: Data
    finetuned_dir: Path | None = None  # the cached fine-tuned model the run starts from, if any

    def log(self, *message) -> None:
        if self.config.progress:
            print(*message)

    def load(self, folder):
        """A model and its tokenizer, prompted as the authors prompt this kind of model."""
        model, tokenizer = load_model(folder, device=self.config.device)
        return model, self.prompted(tokenizer)

    def prompted(self, tokenizer):
        if self.config.chat:
            tokenizer.with_system(**self.config.chat)
        return tokenizer


def check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device torch knows; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU.")


def check_inputs(cfg: RunConfig) -> None:
    """Every setting and path the user gave, before any work."""
    check_device(cfg.device)
    if cfg.protocol in SLICED and cfg.model == "tiny":
        raise UserError(f"--protocol {cfg.protocol} is for real models; the tiny default is CPU-sized already.")
    cfg.unlearn_config("tiny" if cfg.model == "tiny" else "default")  # the command line's values
    if problems := sampling_problems(cfg.eval_temperature, 1.0, None):  # the rules Sampling checks
        raise UserError(f"Bad --eval-temperature: {problems[0]}.")
    if cfg.probe_text and not Path(cfg.probe_text).is_file():
        raise UserError(f"--probe-text {cfg.probe_text} does not exist.")
    if (cfg.finetune_epochs or 0) < 0 or cfg.save_every < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise UserError("--finetune-epochs and --save-every must not be negative, --limit at least 1.")
    if cfg.eval_samples is not None and not 1 <= cfg.eval_samples <= MAX_SAMPLES:
        raise UserError(f"--eval-samples must be from 1 to {MAX_SAMPLES}, not {cfg.eval_samples}.")
    for given in (cfg.model, cfg.reference_model):
        if given and given != "tiny":
            checkpoint.check_name(given)
    if cfg.reference_logs:
        if "tofu" not in cfg.evals:
            raise UserError("--reference-logs is the reference of --eval tofu's forget quality; add --eval tofu.")
        if cfg.reference_model:
            raise UserError("--reference-logs and --reference-model both name forget quality's reference; give one.")
        open_unlearning.reference_truth_ratios(cfg.reference_logs)  # readable, and in open-unlearning's shape
    check_own_data(cfg)


TOFU_ONLY = ("data_dir", "split", "reference", "reference_model", "reference_logs", "evals", "finetune_epochs",
             "probe_text", "full_eval")


def check_own_data(cfg: RunConfig) -> None:
    """The flags of a run on your own data (--forget-questions) go together, and TOFU's do not."""
    if not cfg.own_data:
        given = [f"--{name.replace('_', '-')}" for name in ("retain", "forget_answers") if getattr(cfg, name)]
        if given:
            raise UserError(f"{' and '.join(given)} go with --forget-questions FILE.")
        return
    given = [f"--{'eval' if name == 'evals' else name.replace('_', '-')}" for name in TOFU_ONLY
             if getattr(cfg, name)]
    if given:
        raise UserError(f"{', '.join(given)} belong to TOFU runs; with --forget-questions a run evaluates its "
                        f"answers against the model's own (docs/own-data.md).")
    if cfg.method not in own_data.NO_ANSWERS_NEEDED:
        raise UserError(f"--method {cfg.method} trains on the forget answers, which --forget-questions runs "
                        f"without; use --method pmc (or idk).")
    if cfg.model != "tiny" and not cfg.retain:
        raise UserError(f"--model {cfg.model} needs --retain FILE with the questions (or QA pairs) whose "
                        f"answers unlearning must keep; only the tiny default has a retain split of its own.")


def out_path(cfg: RunConfig) -> Path:
    """--out, absolute (default: runs/<model>-<method>-<split or questions file>)."""
    name = Path(cfg.model).name if cfg.model not in checkpoint.ALIASES else cfg.model
    data = Path(cfg.forget_questions).stem if cfg.forget_questions else cfg.split
    return Path(cfg.out or f"runs/{name}-{cfg.method}-{data}").expanduser().resolve()


def output_folder(cfg: RunConfig) -> Path:
    """The run's --out, created if need be and locked for this run alone (`lock`); the temporary
    files of a write that was killed are removed."""
    out = out_path(cfg)
    if out.is_dir() and not (out / "run.json").exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name != ".lock")
        if foreign:  # never write into, or clean up, a folder that holds something else
            raise UserError(f"--out {out} already holds files that are not a pmc_min run ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} cannot be created ({e.strerror}).") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out} is not writable.")
    lock(out)
    for stale in [*out.glob(".tmp-*"), *out.glob(".*.tmp"), *(out / "checkpoints").glob(".tmp-*"),
                  *(out / "checkpoints").glob(".*.tmp")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if not cfg.resume and (out / "checkpoints" / "LATEST").exists():
        raise UserError(f"{out} holds the checkpoints of an earlier run; continue it with --resume {out} "
                        f"or choose another --out.")
    cfg.out = str(out)
    return out


LOCKS: dict[Path, object] = {}  # the open lock file of each --out this process writes to


def lock(out: Path) -> None:
    """One run per --out: an exclusive lock on <out>/.lock, held until the process ends (the
    system releases it then, so a killed run leaves no stale lock). Under torchrun rank 0 holds it."""
    if out in LOCKS or not distributed.main_rank():
        return
    handle = open(out / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"Another run is writing to {out}; wait for it to end, or choose another --out.") from None
    LOCKS[out] = handle


def unlock(out: Path) -> None:
    handle = LOCKS.pop(Path(out), None)
    if handle is not None:
        handle.close()


def settle(cfg: RunConfig, argv: list[str]) -> Run:
    """Check the inputs, then find the data and the model (a download or the tiny build
    if need be), and merge the defaults: the preset follows what the checkpoint is. A start
    that fails leaves no --out behind that it created."""
    check_inputs(cfg)
    fresh = not out_path(cfg).exists()
    out = output_folder(cfg)
    try:
        run = settle_own_data(cfg, out) if cfg.own_data else settle_tofu(cfg, out)
        check_lengths(run)
        if cfg.unlearn.lora_rank is not None:  # the targets exist: refused now, not after fine-tuning
            lora.check_targets(checkpoint.load_config(run.model_dir).model_type, cfg.unlearn.lora_targets)
        if not cfg.resume and distributed.main_rank():
            write_run_file(cfg, argv, out)
        return run
    except BaseException:
        unlock(out)
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def settle_tofu(cfg: RunConfig, out: Path) -> Run:
    """settle() for TOFU: its splits read and cut to the protocol."""
    finetunes = bool(cfg.finetune_epochs) if cfg.model == "tiny" else cfg.finetune_epochs != 0  # reads `full`
    if not cfg.tiny_default:
        data_dir = resolve_data_dir(cfg.data_dir)
        data = read_splits(data_dir, cfg, finetunes)
    model_dir, tiny_data_dir = model_folder(cfg)
    if cfg.tiny_default:
        data_dir = tiny_data_dir
        data = read_splits(data_dir, cfg, finetunes)
    cfg.merged("tiny" if cfg.model == "tiny" else preset_of(model_dir), parameter_count(model_dir))
    if not cfg.reference:
        run_length(len(data.forget_rows), cfg.unlearn)  # too short for one optimizer step: fail now, not later
    if cfg.reference_logs:
        record_input(cfg.reference_logs)
        given, asked = len(open_unlearning.reference_truth_ratios(cfg.reference_logs)), len(data.tofu_sets["forget"])
        if given != asked:
            raise UserError(f"--reference-logs {cfg.reference_logs} scores {given} forget items, and this run's "
                            f"forget set has {asked}: logs of the same split (and protocol) are needed.")
    if "overunlearn" in cfg.evals:
        data.probe = probe_texts(cfg, data_dir)
    if "factleak" in cfg.evals and (data_dir / "authors.json").is_file():  # the synthetic data's own facts
        record_input(data_dir / "authors.json")
        data.facts = tiny_data.facts(data_dir)
    return Run(config=cfg, out=out, data_dir=data_dir, model_dir=model_dir, data=data)


def settle_own_data(cfg: RunConfig, out: Path) -> Run:
    """settle() for your own data: the questions and the retain data from the user's files
    (the tiny default's retain split without --retain); no fine-tuning, no TOFU."""
    questions = own_data.read_questions(cfg.forget_questions)
    retain = own_data.read_retain(cfg.retain) if cfg.retain else None
    if cfg.forget_answers:  # checked now; the evaluation reads it again, and nothing else reads it
        own_data.read_answers(cfg.forget_answers, questions)
    model_dir, data_dir = model_folder(cfg)
    retain = own_data.without_forget(retain or load_split(data_dir, RETAIN_OF["forget10"]), questions)
    if cfg.limit is not None:
        questions, retain = questions[:cfg.limit], retain[:cfg.limit]
    cfg.merged("tiny" if cfg.model == "tiny" else preset_of(model_dir), parameter_count(model_dir))
    run_length(len(questions), cfg.unlearn)
    return Run(config=cfg, out=out, data_dir=data_dir, model_dir=model_dir,
               data=Data(forget_rows=[{"question": q} for q in questions], retain_rows=retain, sets={}))


def model_folder(cfg: RunConfig) -> tuple[Path, Path | None]:
    """(the model's folder, the tiny default's data folder or None): the tiny build, or a
    checkpoint found, downloaded or converted, with its config checked."""
    if cfg.model == "tiny":
        model_dir, data_dir = tiny.build(device=cfg.device, progress=cfg.progress, log=print)
    else:
        model_dir, data_dir = checkpoint.resolve(cfg.model), None
        checkpoint.load_config(model_dir)
    for f in sorted(Path(model_dir).iterdir()):
        if f.suffix in (".json", ".safetensors"):
            record_input(f)
    return model_dir, data_dir


def check_lengths(run: Run) -> None:
    """Max lengths within what the model supports (a preset's default is capped at it; a --max-length
    beyond it is refused), and every question the model answers (forget, evaluation, questions-only
    retain) short enough as prompted to leave room for an answer: else one sentence that names the
    file and line of the longest. (Training rows are cut at max length, as the authors cut them.)"""
    cfg = run.config
    limit = checkpoint.load_config(run.model_dir).max_position_embeddings
    if cfg.unlearn.max_length > limit:
        if cfg.unlearn_flags.get("max_length") is not None:
            raise UserError(f"--max-length {cfg.unlearn.max_length} is more than the model supports ({limit} "
                            f"positions).")
        cfg.unlearn.max_length = limit
    if cfg.finetune.max_length > limit:
        cfg.finetune = replace(cfg.finetune, max_length=limit)
    tokenizer = run.prompted(Tokenizer.from_folder(run.model_dir))
    answered = run.data.forget_rows + [r for r in run.data.retain_rows if "answer" not in r]  # the model answers
    questions = {r["question"] for r in answered} | {q for qs, _ in run.data.sets.values() for q in qs}
    questions = sorted(questions)
    lengths = [len(ids) for ids in tokenizer.encode_batch([prompt(q, tokenizer.chat) for q in questions], bos=True)]
    longest = max(range(len(questions)), key=lengths.__getitem__)
    if lengths[longest] >= cfg.unlearn.max_length:
        where = line_of(questions[longest], run.model_dir)
        raise UserError(f"{where}: the question is {lengths[longest]} tokens as prompted, which leaves no room for an "
                        f"answer within --max-length {cfg.unlearn.max_length}; shorten it, or raise --max-length (the "
                        f"model supports {limit}).")


def line_of(question: str, model_dir: Path) -> str:
    """"<file>, line <n>" of the first data file read that holds this question."""
    for path in map(Path, INPUTS):
        if path.parent != Path(model_dir).resolve():
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if question in line or json.dumps(question)[1:-1] in line:
                    return f"{path}, line {number}"
    return "A question"


def write_run_file(cfg: RunConfig, argv: list[str], out: Path) -> None:
    """run.json: what --resume repeats (every setting as given, paths absolute) and every input
    file's content hash, which --resume checks first."""
    write_json(out / "run.json", {"argv": argv, "config": cfg.given(), "inputs": pinned_inputs()}, indent=1)


def probe_texts(cfg: RunConfig, data_dir: Path) -> list[str]:
    """The unrelated text of the over-unlearning probe."""
    if cfg.probe_text:  # its existence was checked with the other inputs
        record_input(cfg.probe_text)
        return [line for line in Path(cfg.probe_text).read_text(encoding="utf-8").splitlines() if line.strip()][:100]
    if (data_dir / "general.json").is_file():  # the tiny default's general-knowledge split
        return [f"{r['question']} {r['answer']}" for r in load_split(data_dir, "general")]
    return wikitext_probe(100)  # the paper's: the first 100 paragraphs of wikitext-2 (a download, cached)


def read_splits(data_dir: Path, cfg: RunConfig, finetunes: bool) -> Data:
    """The forget and retain rows, the evaluation sets, the fine-tuning rows (or None) and TOFU's
    metric sets (or None), cut to the CPU protocol's slice and to --limit rows."""
    forget_rows = load_split(data_dir, cfg.split)
    retain_rows = load_split(data_dir, RETAIN_OF[cfg.split])
    if cfg.protocol in SLICED:  # TOFU's authors are 20 consecutive rows each
        retain_rows = retain_rows[:20 * CPU_PROTOCOL["retain_authors"]]
        sets = eval_sets(data_dir, cfg.split, retain=retain_rows, rows=CPU_PROTOCOL["eval_rows"])
        full_rows = retain_rows + forget_rows if finetunes else None
    else:
        sets = eval_sets(data_dir, cfg.split, full=cfg.full_eval)
        full_rows = load_split(data_dir, "full") if finetunes else None
    tofu_sets = tofu.tofu_sets(data_dir, cfg.split) if "tofu" in cfg.evals else None
    if tofu_sets and cfg.protocol in SLICED:  # TOFU's metrics on the questions the ROUGE evaluation asks
        asked = {name: set(sets[name][0]) for name in tofu_sets}
        tofu_sets = {name: [r for r in rows if r["question"] in asked[name]] for name, rows in tofu_sets.items()}
    if cfg.limit is not None:
        n = cfg.limit
        forget_rows, retain_rows = forget_rows[:n], retain_rows[:n]
        sets = {k: (q[:n], a[:n]) for k, (q, a) in sets.items()}
        full_rows = full_rows[:n] if full_rows else full_rows
        tofu_sets = {k: rows[:n] for k, rows in tofu_sets.items()} if tofu_sets else tofu_sets
    return Data(forget_rows=forget_rows, retain_rows=retain_rows, sets=sets, full_rows=full_rows, tofu_sets=tofu_sets)


def preset_of(model_dir: Path) -> str:
    """The authors' configuration for this checkpoint: "instruct" when its tokenizer has a chat
    template (ChatML or Llama 3), else "default" (Phi-1.5's), whatever the folder is called."""
    path = Path(model_dir) / "tokenizer_config.json"
    try:
        template = json.loads(path.read_text()).get("chat_template") if path.is_file() else None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}).") from None
    return "instruct" if chat_format(template if isinstance(template, str) else None) else "default"
