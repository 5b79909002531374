"""The embedded default: a tiny Phi that knows a synthetic TOFU, built here.

`python run.py` needs no download: this module writes the data set of
`tiny_data.py`, trains a byte-level BPE tokenizer on it with `tokenizers`,
and trains a few-million-parameter Phi-architecture model from scratch
until it knows the authors and the general-knowledge questions. Everything
is saved in HF's layout and cached, so later runs start at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import load, save
from .files import build_once, cache_root
from .data import RETAIN_OF
from .evaluate import eval_sets, evaluate
from .model import Config, Transformer
from .qa import prompt, target
from .tiny_data import make_dataset
from .tokenizer import Tokenizer
from .train import finetune

VERSION = "tiny-v7"  # a new name whenever the build changes numerically (v6: row-major NLL; v7: the head on labelled positions only)


def train_tokenizer(data_dir: Path, vocab_size: int = 1024) -> Tokenizer:
    """A GPT-2-style byte-level BPE trained on the data set's text."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    for name in ("full", "world_facts", "real_authors", "general", "forget10_perturbed"):
        for line in (data_dir / f"{name}.json").read_text().splitlines():
            row = json.loads(line)
            texts.append(prompt(row["question"]) + target(row["answer"]))
            texts.extend(v for k, v in row.items() if k.startswith("paraphrased"))
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return Tokenizer(tok, "<|endoftext|>")


TINY_CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                   num_attention_heads=8, partial_rotary_factor=0.5, max_position_embeddings=256,
                   bos_token_id=None, eos_token_id=0)


def cache_dir() -> Path:
    return cache_root() / VERSION


def train_until_known(model: Transformer, tokenizer: Tokenizer, rows: list[dict], probe: dict, *, seed: int,
                      max_epochs: int, progress: bool, log, desc: str) -> None:
    """Train from scratch until the greedy ROUGE-L recall on `probe` reaches 0.97 (checked every 5 epochs)."""
    def known(epoch: int) -> bool:
        if epoch % 5:
            return False
        recall = evaluate(model, tokenizer, probe, max_length=96)[0]["rouge_l_recall"]
        log(f"  epoch {epoch}: greedy ROUGE-L recall {', '.join(f'{k} {v:.3f}' for k, v in recall.items())}")
        return min(recall.values()) >= 0.97

    finetune(model, tokenizer, rows, epochs=max_epochs, lr=1e-3, batch_size=32, max_length=96, seed=seed,
             max_grad_norm=1.0, desc=desc, progress=progress, on_epoch=known, decay_all=True)


def rows_of(data_dir: Path, names) -> list[dict]:
    return [json.loads(line) for name in names for line in (data_dir / f"{name}.json").read_text().splitlines()]


def train_from_scratch(tokenizer: Tokenizer, data_dir: Path, names, probe: dict, *, device, seed: int,
                       max_epochs: int, progress: bool, log, desc: str) -> Transformer:
    """A fresh TINY_CONFIG model trained on the named splits until it knows `probe`."""
    torch.manual_seed(seed)
    model = Transformer(Config(**TINY_CONFIG)).to(device)
    train_until_known(model, tokenizer, rows_of(data_dir, names), probe, seed=seed, max_epochs=max_epochs,
                      progress=progress, log=log, desc=desc)
    return model


def build(folder: Path | None = None, *, device="cpu", seed: int = 0, max_epochs: int = 60,
          progress: bool = True, log=print) -> tuple[Path, Path]:
    """(model folder, data folder) of the embedded default, built on first use."""
    folder = Path(folder) if folder else cache_dir()
    if (folder / "READY").is_file():
        if not (folder / "data" / "real_authors_perturbed.json").is_file():  # built before TOFU's metrics:
            make_dataset(folder / "data", seed)  # the same files again (deterministic), and the new ones
    else:
        log(f"Building the embedded tiny default in {folder} (once) ...")

        def make(tmp: Path) -> None:
            make_dataset(tmp / "data", seed)
            tokenizer = train_tokenizer(tmp / "data")
            probe = {"forget10": eval_sets(tmp / "data", "forget10")["forget"]}
            model = train_from_scratch(tokenizer, tmp / "data", ("full", "world_facts", "real_authors", "general"),
                                       probe, device=device, seed=seed, max_epochs=max_epochs, progress=progress,
                                       log=log, desc="tiny model")
            save(model, tokenizer, tmp / "model")

        build_once(folder, make)
    return folder / "model", folder / "data"


def build_reference(split: str = "forget10", *, device="cpu", seed: int = 0, max_epochs: int = 60,
                    progress: bool = True, log=print) -> Path:
    """The "ideal" unlearned model: the same recipe, trained on everything but the forget split."""
    model_dir, data_dir = build(device=device, seed=seed, progress=progress, log=log)
    folder = cache_dir() / f"reference-{split}"
    if (folder / "READY").is_file():
        return folder
    log(f"Training the retain-only reference for {split} in {folder} (once) ...")

    def make(tmp: Path) -> None:
        _, tokenizer = load(model_dir)
        retain = eval_sets(data_dir, split)["retain"]
        model = train_from_scratch(tokenizer, data_dir, (RETAIN_OF[split], "world_facts", "real_authors", "general"),
                                   {"retain": (retain[0][:100], retain[1][:100])}, device=device, seed=seed,
                                   max_epochs=max_epochs, progress=progress, log=log, desc="reference model")
        save(model, tokenizer, tmp)

    return build_once(folder, make)
