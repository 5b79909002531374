"""A thin wrapper over a `tokenizers.Tokenizer` read from HF's tokenizer.json.

It knows what the rest of pmc_min needs beyond encode/decode: which token ends
an answer (eos), which fills padding, and which begins every sequence (bos) when
the tokenizer's post-processor adds one. Phi-1.5 has eos `<|endoftext|>`, no pad
token (eos doubles as pad) and no bos; Gemma begins every sequence with `<bos>`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError


def _token_content(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...} in tokenizer_config.json
        return value.get("content")
    return value


def chat_format(template: str | None) -> dict | None:
    """The chat convention a tokenizer's (Jinja) chat template follows: None for
    base models, else {"style": "chatml" | "llama3", "system": the template's
    default system prompt, "knowledge_cutoff": the date a Llama 3.1/3.2 system
    header states}. `with_system` sets the run's system prompt and date."""
    if not template:
        return None
    if "<|im_start|>" in template:
        default = re.search(r"<\|im_start\|>system(?:\\n|\n)([^<'{]*)<\|im_end\|>", template)
        return {"style": "chatml", "system": default.group(1) if default else None}
    if "<|start_header_id|>" in template:
        cutoff = re.search(r"Cutting Knowledge Date: (.*?)(?:\\n|\n)", template)
        return {"style": "llama3", "system": None, "knowledge_cutoff": cutoff.group(1) if cutoff else None}
    return None


def begin_of_sequence(tok: HFTokenizer) -> int | None:
    """The token a tokenizer puts before every sequence, as its tokenizer.json's post-processor
    says (Gemma's `<bos>`, Llama 3's `<|begin_of_text|>`): what transformers adds by default."""
    plain, full = tok.encode("a", add_special_tokens=False).ids, tok.encode("a").ids
    return full[0] if len(full) == len(plain) + 1 and full[1:] == plain else None


class Tokenizer:
    def __init__(self, tok: HFTokenizer, eos_token: str, pad_token: str | None = None,
                 chat_template: str | None = None):
        self.tok = tok
        self.bos_id = begin_of_sequence(tok)  # what encode(..., bos=True) puts first; None: nothing
        self.chat_template = chat_template
        self.chat = chat_format(chat_template)
        self.eos_token = eos_token
        self.pad_token = pad_token or eos_token
        self.eos_id = tok.token_to_id(eos_token)
        self.pad_id = tok.token_to_id(self.pad_token)
        if self.eos_id is None or self.pad_id is None:
            raise UserError(f"The tokenizer has no token {eos_token!r} to use as end of sequence.")

    def with_system(self, system: str | None, date_string: str | None = None) -> None:
        """Prompt an instruct model with this system prompt (and, for Llama 3.1/3.2,
        this `date_string`), as the authors' `apply_chat_template` calls do."""
        if self.chat is not None:
            self.chat = {**self.chat, "system": system, "date_string": date_string}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """The ids of text; with bos, as the start of a sequence (a prompt): the tokenizer's bos
        first, if it has one and the text (a chat template's rendering, say) does not begin with it."""
        return self.start(bos, self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        return [self.start(bos, e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def start(self, bos: bool, ids: list[int]) -> list[int]:
        if bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            return [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.tok.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    @classmethod
    def from_folder(cls, folder: Path, eos_token_id: int | None = None) -> "Tokenizer":
        """Read tokenizer.json; eos comes from tokenizer_config.json, else the
        model config's eos_token_id, else `<|endoftext|>`."""
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path} is missing; a model folder needs the tokenizer.json that HF tokenizers write.")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise UserError(f"{path} could not be read as a tokenizer ({e}).") from None
        config = {}
        if (Path(folder) / "tokenizer_config.json").is_file():
            config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        eos = _token_content(config.get("eos_token"))
        if eos is None and eos_token_id is not None:
            eos = tok.id_to_token(eos_token_id)
        return cls(tok, eos or "<|endoftext|>", _token_content(config.get("pad_token")), config.get("chat_template"))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.tok.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.eos_token,
                  "pad_token": self.pad_token, "clean_up_tokenization_spaces": False}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
