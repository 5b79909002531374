"""Unlearning your own data from its questions alone (the paper's first line: unlearning
"without accessing the data to be forgotten").

PMC's objective needs the forget *questions* and the model's own answers, never the
answers to be forgotten (docs/method.md §2). So a privacy team needs only:

- the forget questions: a `.txt` file with one question a line, or JSON Lines with a
  `question` field (every other field is parsed and dropped at once);
- retain data: QA pairs (JSON Lines with `question` and `answer`), or questions only,
  whose targets are then the model's own greedy answers before unlearning
  (self-distilled retain), so that no ground truth is needed anywhere.

Without ground truth, a run is scored against y0, the model's own original greedy
answers (`similarity_to_y0`): the greedy ROUGE-L recall on the forget and on the
retain questions (1 before unlearning, by definition), and the worst case over
sampled forget answers (leakage without ground truth). Answers to the forget
questions given for evaluation only (`read_answers`) are read by the evaluation and
by nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .attacks import worst_case
from .errors import UserError
from .files import record_input
from .qa import generate_answers, greedy_answers
from .rouge import rouge_l_recall
from .sample import Sampling
from .config import UnlearnConfig
from .train import METHOD_CLASSES, unlearn

EVAL_RETAIN = 400  # retain questions scored against y0 at most (the authors' retain evaluation size)


def read_rows(path: str | Path, what: str, fields=("question",)) -> list[dict]:
    """The rows of a `.txt` file (one question a line) or of JSON Lines (any other name),
    each holding only the asked-for `fields` that the line has (a question always);
    blank lines skipped, repeated questions dropped with a note."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        record_input(path)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"{what} file {path} is a folder, not a file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} file {path} could not be read ({e}).") from None
    rows, seen, dropped = [], set(), 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            row = {"question": line.strip()}
        else:
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}); give JSON Lines, or one question "
                                f"a line in a .txt file.") from None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("question"), str) \
                    or not parsed["question"].strip():
                raise UserError(f"{path}, line {number}: no text field \"question\".")
            row = {k: parsed[k] for k in fields if k in parsed}  # nothing else is kept
            for k, v in row.items():
                if not isinstance(v, str):
                    raise UserError(f"{path}, line {number}: field \"{k}\" is not text.")
        if row["question"] in seen:
            dropped += 1
            continue
        seen.add(row["question"])
        rows.append(row)
    if not rows:
        raise UserError(f"{what} file {path} holds no questions.")
    if dropped:
        print(f"{path}: dropped {dropped} repeated question(s); {len(rows)} remain.")
    return rows


def read_questions(path: str | Path) -> list[str]:
    """The forget questions, and nothing else of the file."""
    return [r["question"] for r in read_rows(path, "--forget-questions")]


def read_retain(path: str | Path) -> list[dict]:
    """Retain rows: every line with an `answer` (QA pairs), or none (questions only, to be
    self-distilled)."""
    rows = read_rows(path, "--retain", fields=("question", "answer"))
    with_answer = sum("answer" in r for r in rows)
    if 0 < with_answer < len(rows):
        raise UserError(f"--retain {path}: {with_answer} of {len(rows)} rows have an \"answer\"; give every row an "
                        f"answer (QA pairs) or none (questions only, answered by the model itself).")
    return rows


def without_forget(rows: list[dict], forget: list[str]) -> list[dict]:
    """The retain rows whose question is not a forget question (with a note when some are):
    training to keep such an answer would undo the unlearning."""
    forget = set(forget)
    kept = [r for r in rows if r["question"] not in forget]
    if not kept:
        raise UserError("Every retain question is also a forget question.")
    if len(kept) < len(rows):
        print(f"Dropped {len(rows) - len(kept)} retain question(s) that are also forget questions.")
    return kept


def read_answers(path: str | Path, questions: list[str]) -> list[str]:
    """Ground-truth answers to the forget questions, for evaluation only: JSON Lines with
    `question` and `answer` (matched by question), or a `.txt` file with one answer a line in
    the order of the forget questions."""
    path = Path(path).expanduser()
    if path.suffix == ".txt":
        answers = [r["question"] for r in read_rows(path, "--forget-answers")]
        if len(answers) != len(questions):
            raise UserError(f"--forget-answers {path} holds {len(answers)} answers for {len(questions)} forget "
                            f"questions; a .txt file gives one answer a line, in the questions' order.")
        return answers
    rows = read_rows(path, "--forget-answers", fields=("question", "answer"))
    by_question = {r["question"]: r["answer"] for r in rows if "answer" in r}
    missing = [q for q in questions if q not in by_question]
    if missing:
        raise UserError(f"--forget-answers {path} has no answer for {len(missing)} of the {len(questions)} forget "
                        f"questions (first: {missing[0]!r}).")
    return [by_question[q] for q in questions]


def spread(n: int, k: int = EVAL_RETAIN) -> list[int]:
    """At most k indices of range(n), evenly spread."""
    return list(range(n))[::max(1, -(-n // k))][:k]


def similarity_to_y0(model, tokenizer, forget: list[str], retain: list[str], y0: dict | None, *, m: int,
                     sampling: Sampling, max_length: int, seed: int = 0, answers: list[str] | None = None,
                     retain_answers: list[str] | None = None, examples: int = 5) -> dict:
    """The evaluation without ground truth. Greedy answers to the forget and retain questions
    and m sampled answers to each forget question, scored by ROUGE-L recall against y0 (the
    model's own greedy answers before unlearning; these greedy answers are y0 when y0 is None).
    With `answers` (and retain rows' answers), the same answers are also scored against the
    ground truth."""
    now = {"forget": greedy_answers(model, tokenizer, forget, max_length), "retain": greedy_answers(model, tokenizer, retain, max_length)}
    fresh, y0 = y0 is None, y0 or now
    samples = generate_answers(model, tokenizer, forget, n=m, max_length=max_length, sampling=sampling, seed=seed)
    recall = lambda refs, outs: float(np.mean([rouge_l_recall(r, o) for r, o in zip(refs, outs)]))  # noqa: E731
    sampled = worst_case(y0["forget"], samples)
    result = {"similarity_to_y0": {
        "forget": recall(y0["forget"], now["forget"]), "retain": recall(y0["retain"], now["retain"]),
        "forget_max_of_samples": sampled["mean_max_rouge_l_recall"], "forget_samples": sampled["mean_rouge_l_recall"],
        "samples_per_question": m, "temperature": sampling.temperature,
        "examples": [{"question": q, "y0": a, "generated": g}
                     for q, a, g in list(zip(forget, y0["forget"], now["forget"]))[:examples]]},
        **({"y0": y0} if fresh else {})}
    if answers is not None:
        truth = {"rouge_l_recall": {"forget": recall(answers, now["forget"])},
                 "leakage": {**worst_case(answers, samples), "samples_per_question": m},
                 "examples": [{"question": q, "answer": a, "generated": g}
                              for q, a, g in list(zip(forget, answers, now["forget"]))[:examples]]}
        if retain_answers is not None:
            truth["rouge_l_recall"]["retain"] = recall(retain_answers, now["retain"])
        result["ground_truth"] = truth
    return result


def self_distilled(model, tokenizer, questions: list[str], max_length: int) -> list[dict]:
    """Retain rows whose targets are the model's own greedy answers (no ground truth needed)."""
    return [{"question": q, "answer": a} for q, a in zip(questions, greedy_answers(model, tokenizer, questions, max_length))]


def unlearn_questions(model, tokenizer, questions: list[str], retain: list, config: UnlearnConfig | None = None, *,
                      progress: bool = True, on_batch=None) -> tuple:
    """Unlearn what `model` answers to `questions`, without their answers: (model, curves).

    retain: QA rows ({"question", "answer"}) or plain questions, which the model answers
    itself before unlearning (self-distilled retain). config: an UnlearnConfig (PMC's
    defaults when None); a method that trains on the forget answers (GA, GD, NPO, SimNPO)
    cannot run without them. The model is unlearned in place; curves["y0"] holds its
    original answers, curves["final_picks"] what it was trained to say instead."""
    cfg = config or UnlearnConfig()
    if cfg.method not in NO_ANSWERS_NEEDED:
        raise UserError(f"{cfg.method} trains on the forget answers; without them use method pmc (or idk).")
    questions = list(dict.fromkeys(questions))
    rows = [{"question": r} if isinstance(r, str) else r for r in retain]
    bad = [q for q in questions if not isinstance(q, str) or not q.strip()]
    bad += [r for r in rows if not isinstance(r, dict) or not isinstance(r.get("question"), str)
            or not isinstance(r.get("answer", ""), str)]
    if bad:
        raise UserError(f"unlearn_questions takes questions as non-empty strings and retain rows as strings or "
                        f"{{'question': str, 'answer': str}}, not {bad[0]!r}.")
    if not questions or not rows:
        raise UserError("unlearn_questions needs at least one forget question and one retain row or question.")
    rows = without_forget(rows, questions)
    if not all("answer" in r for r in rows):
        rows = self_distilled(model, tokenizer, [r["question"] for r in rows], cfg.max_length)
    curves = unlearn(model, tokenizer, [{"question": q} for q in questions], rows, cfg, progress=progress,
                     on_batch=on_batch)
    return model, curves


NO_ANSWERS_NEEDED = tuple(name for name, m in METHOD_CLASSES.items() if not m.needs_answers)  # PMC and IDK
