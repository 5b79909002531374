"""TOFU data: the splits, the prompt format, and answer-only label masking.

TOFU (Maini et al., 2024) is 200 fictitious authors x 20 QA pairs (`full`);
`forgetXX` is the last 1/5/10 % of `full` and `retainYY` the rest.
`forgetXX_perturbed` adds a paraphrased question and answer and five
perturbed answers; `world_facts` and `real_authors` measure general utility.
Files are JSON Lines named as in the hub dataset `locuslab/TOFU`, so a local
folder and a hub snapshot read the same way.

Prompt format for base models (docs/method.md §2): the prompt is
"Question: {q}\n", the target "Answer: {a}" + eos, and the loss covers the
target tokens only. Instruct models get the question as a chat turn
(ChatML or Llama 3, as their tokenizer's chat template has it) and answer
as the assistant, ending with their end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError
from .tokenizer import Tokenizer

HUB_DATASET = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
ANSWER_TAG = "Answer:"


def prompt(question: str, chat: dict | None = None) -> str:
    """Base models: "Question: q\n". Instruct models (`chat`, from the
    tokenizer's chat template and the run's system prompt): what the
    template's `apply_chat_template([system, user], add_generation_prompt=True)`
    renders, in ChatML or Llama 3 form. Llama 3.1/3.2 templates always write a
    system header with their knowledge cutoff and `date_string`."""
    if chat is None:
        return f"Question: {question}\n"
    system = chat.get("system")
    if chat["style"] == "chatml":
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return f"{head}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    head = ""
    if chat.get("knowledge_cutoff"):  # Llama 3.1/3.2: the system turn is always there
        head = (f"Cutting Knowledge Date: {chat['knowledge_cutoff']}\n"
                f"Today Date: {chat.get('date_string') or DEFAULT_DATE}\n\n")
    if head or system:
        head = f"<|start_header_id|>system<|end_header_id|>\n\n{head}{(system or '').strip()}<|eot_id|>"
    return (f"<|begin_of_text|>{head}<|start_header_id|>user<|end_header_id|>\n\n{question.strip()}<|eot_id|>"
            f"<|start_header_id|>assistant<|end_header_id|>\n\n")


DEFAULT_DATE = "26 Jul 2024"  # what a Llama 3.2 template writes when no date_string (and no clock) is given


def target(answer: str, chat: dict | None = None) -> str:
    """What the model should write after the prompt (eos is appended when tokenised);
    Llama 3 templates trim the assistant's content."""
    if chat is None:
        return f"{ANSWER_TAG} {answer}"
    return answer.strip() if chat["style"] == "llama3" else answer


def strip_tag(generation: str) -> str:
    """The answer a model wrote after the prompt, without its "Answer:" tag
    (scored without it; `target` puts it back for training)."""
    text = generation.strip()
    return text[len(ANSWER_TAG):].strip() if text.startswith(ANSWER_TAG) else text


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """A local folder of TOFU files, or the hub snapshot of locuslab/TOFU."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise UserError(f"Data folder {path} does not exist; pass --data-dir with the TOFU JSON Lines files.")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(HUB_DATASET, repo_type="dataset", allow_patterns=["*.json"]))
    except Exception as e:
        raise UserError(f"The TOFU data could not be fetched from the hub ({type(e).__name__}); pass --data-dir "
                        f"with a local copy of {HUB_DATASET}'s JSON Lines files.") from None


WIKITEXT_ROWS = "https://datasets-server.huggingface.co/rows"
WIKITEXT = {"dataset": "Salesforce/wikitext", "config": "wikitext-2-raw-v1", "split": "train"}


def wikitext_probe(n: int = 100, fetch=None) -> list[str]:
    """The first n paragraphs of wikitext-2-raw-v1's train split (empty lines and "= Heading ="
    lines skipped): the paper's unrelated text for the over-unlearning probe. Read through the
    hub's dataset viewer, 100 rows a request, and cached as one paragraph a line."""
    from .checkpoint import cache_root
    from .resume import atomic_write_text

    path = cache_root() / "probe" / f"wikitext-2-raw-v1-train-{n}.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()
    if fetch is None:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        if constants.HF_HUB_OFFLINE:
            raise UserError("wikitext-2 cannot be fetched with HF_HUB_OFFLINE set; pass --probe-text FILE.")

        def fetch(offset: int) -> dict:
            response = get_session().get(WIKITEXT_ROWS, params={**WIKITEXT, "offset": offset, "length": 100})
            response.raise_for_status()
            return response.json()
    paragraphs, offset = [], 0
    try:
        while len(paragraphs) < n:
            rows = fetch(offset)["rows"]
            if not rows:
                break
            for r in rows:
                text = " ".join(r["row"]["text"].split())
                if text and not (text.startswith("=") and text.endswith("=")):
                    paragraphs.append(text)
            offset += len(rows)
    except Exception as e:
        raise UserError(f"wikitext-2 could not be fetched from the hub's dataset viewer ({type(e).__name__}); "
                        f"pass --probe-text FILE with unrelated text, one passage a line.") from None
    paragraphs = paragraphs[:n]
    if len(paragraphs) < n:
        raise UserError(f"wikitext-2's train split gave only {len(paragraphs)} paragraphs, not {n}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(p + "\n" for p in paragraphs))
    return paragraphs


def load_split(data_dir: str | Path, name: str, required=("question", "answer")) -> list[dict]:
    """The rows of `<data_dir>/<name>.json`, one JSON object per line."""
    path = Path(data_dir) / f"{name}.json"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} not found; the data folder must hold TOFU's {name}.json.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} could not be read ({e}).") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
        missing = [k for k in required if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise UserError(f"{path}, line {number}: missing text field(s) {', '.join(missing)}.")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows.")
    return rows


def encode_qa(tokenizer: Tokenizer, questions: list[str], answers: list[str], max_length: int,
              device="cpu") -> dict[str, torch.Tensor]:
    """A right-padded training batch: prompt + target + eos, tokenised as one
    text and cut to max_length; labels are -100 on the prompt (its own length
    in tokens, as the authors count it) and on padding. A chat model keeps its
    end-of-turn token last when the text is cut, as the authors' encoding does."""
    rows, labels = [], []
    for q, a in zip(questions, answers):
        p = tokenizer.encode(prompt(q, tokenizer.chat))
        ids = tokenizer.encode(prompt(q, tokenizer.chat) + target(a, tokenizer.chat)) + [tokenizer.eos_id]
        lab = [-100] * len(p) + ids[len(p):]
        if len(ids) > max_length:
            ids, lab = ids[:max_length], lab[:max_length]
            if tokenizer.chat is not None:
                ids[-1] = lab[-1] = tokenizer.eos_id
        rows.append(ids)
        labels.append(lab)
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, lab) in enumerate(zip(rows, labels)):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        label_ids[b, :len(lab)] = torch.tensor(lab)
        mask[b, :len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": label_ids.to(device)}


def encode_rows(tokenizer: Tokenizer, rows: list[dict], max_length: int, device="cpu") -> dict[str, torch.Tensor]:
    """encode_qa on the questions and ground-truth answers of TOFU rows."""
    return encode_qa(tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows], max_length, device)
