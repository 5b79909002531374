"""Question answering: the prompt format, answer-only label masking, and
answers generated within a length budget. Training, evaluation, the attacks
and PMC all ask questions this way.

Base models (docs/method.md §2): the prompt is "Question: {q}\n", the target
"Answer: {a}" + eos, and the loss covers the target tokens only; the model's
answer starts with the "Answer:" tag, which is stripped. Instruct models get
the question as a chat turn (ChatML or Llama 3, as their tokenizer's chat
template has it, with the run's system prompt) and answer as the assistant,
ending with their end-of-turn token.
"""

from __future__ import annotations

import numpy as np
import torch

from . import distributed
from .losses import labelled_nll
from .model import Transformer, autocast
from .sample import Sampling, generate_ids, prompt_seeds
from .tokenizer import Tokenizer

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


def encode_qa(tokenizer: Tokenizer, questions: list[str], answers: list[str], max_length: int,
              device="cpu", tag_in_prompt: bool = False) -> dict[str, torch.Tensor]:
    """A right-padded training batch: prompt + target + eos, tokenised as one
    text and cut to max_length; labels are -100 on the prompt (its own length
    in tokens, as the authors count it) and on padding. A chat model keeps its
    end-of-turn token last when the text is cut, as the authors' encoding does.

    tag_in_prompt: open-unlearning's placement for a base model (its `preprocess_chat_instance`
    with the "Question: " / "\n" / "Answer: " tags): the prompt is "Question: q\nAnswer: ", the
    answer follows it, and the labels count the answer's tokens and eos, not the tag's. Its
    prompt is tokenised alone as theirs is, so where its trailing space fuses with the answer's
    first word the label mask covers that token too, as in their answer losses."""
    rows, labels = [], []
    for q, a in zip(questions, answers):
        text, answer = prompt(q, tokenizer.chat), target(a, tokenizer.chat)
        if tag_in_prompt and tokenizer.chat is None:
            text, answer = f"{text}{ANSWER_TAG} ", a
        p = tokenizer.encode(text, bos=True)
        ids = tokenizer.encode(text + answer, bos=True) + [tokenizer.eos_id]
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


def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The answer tokens an encode_qa batch's mean NLL averages over."""
    return int((batch["labels"][:, 1:] != -100).sum())


def token_nll(model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced: the NLL of every labelled token of an encode_qa batch, (B, T-1) in float32 (0 where
    not counted: the prompt and padding), and the mask of counted tokens. Token t+1 is predicted from
    position t. Every loss and every answer score of pmc_min is a sum of these."""
    return labelled_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def answer_nll(model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL of each row's answer tokens, their number), one per row of an encode_qa batch."""
    nll, counted = token_nll(model, batch)
    return nll.sum(-1), counted.sum(-1)


@torch.no_grad()
def score_answers(model: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str],
                  max_length: int, batch_size: int = 32, tag_in_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The teacher-forced scorer: for each (question, answer), the summed NLL of the answer's tokens as
    trained (the target and its end token; float64) and their number. PMC's log p(y0 | q), NPO's
    reference, TOFU's answer probabilities, fluency and the least-likely-option attack are all read
    from it (TOFU's with open-unlearning's `tag_in_prompt`, see `encode_qa`). The model's mode is
    restored."""
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with autocast(model.device):
        for i in range(0, len(questions), batch_size):
            batch = encode_qa(tokenizer, questions[i:i + batch_size], answers[i:i + batch_size], max_length,
                              model.device, tag_in_prompt)
            total, count = answer_nll(model, batch)
            sums.append(total.double().cpu())
            counts.append(count.cpu())
    model.train(was_training)
    return torch.cat(sums).numpy(), torch.cat(counts).numpy()


def answer_logprobs(model: Transformer, tokenizer: Tokenizer, questions: list[str], answers: list[str],
                    max_length: int, batch_size: int) -> list[float]:
    """log p(answer | question), teacher-forced, for each pair (NPO's reference, PMC's log p(y0 | q))."""
    return (-score_answers(model, tokenizer, questions, answers, max_length, batch_size)[0]).tolist()


def complete(model: Transformer, tokenizer: Tokenizer, prompts: list[list[int]], *, n: int, max_length: int,
             sampling: Sampling | None = None, seed: int | None = None, max_batch_tokens: int = 1 << 16,
             compile: bool = False) -> list[list[str]]:
    """n decoded completions of each tokenised prompt (greedy, one, without `sampling`),
    each prompt + its completion within max_length tokens: every prompt has its own budget, so a
    long one never shortens the others' answers (docs/authors.md). In eval mode (the model's mode
    is restored). Under torchrun each rank completes every N-th prompt, with the seed it has in
    one process, and every rank gets all completions."""
    budgets = [max(1, max_length - len(p)) for p in prompts]
    mine = distributed.share(len(prompts))
    seeds = prompt_seeds(seed, len(prompts)) if sampling is not None else None
    was_training = model.training
    model.eval()
    ids = generate_ids(model, [prompts[i] for i in mine], n=n, max_new_tokens=[budgets[i] for i in mine],
                       eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, sampling=sampling,
                       seed=None if seeds is None else [seeds[i] for i in mine], max_batch_tokens=max_batch_tokens,
                       compile=compile)
    model.train(was_training)
    return distributed.gather([tokenizer.decode_batch(per_prompt) for per_prompt in ids], len(prompts))


def generate_answers(model: Transformer, tokenizer: Tokenizer, questions: list[str], *, n: int, max_length: int,
                     **settings) -> list[list[str]]:
    """n answers per question (`complete`'s settings), the "Answer:" tag stripped."""
    prompts = tokenizer.encode_batch([prompt(q, tokenizer.chat) for q in questions], bos=True)
    return [[strip_tag(text) for text in texts]
            for texts in complete(model, tokenizer, prompts, n=n, max_length=max_length, **settings)]


def greedy_answers(model: Transformer, tokenizer: Tokenizer, questions: list[str], max_length: int) -> list[str]:
    """One greedy answer per question."""
    return [a[0] for a in generate_answers(model, tokenizer, questions, n=1, max_length=max_length)]
