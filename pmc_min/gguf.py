"""A small GGUF reader: metadata, tensor infos, and numpy dequantisation.

GGUF (llama.cpp's file format) is: magic "GGUF", version, tensor count,
metadata count; the metadata key/values; one info per tensor (name, dims,
ggml type, offset); then, aligned, the tensor data. Dims are listed fastest
first, so a numpy array's shape is the reversed dims. Quantised types store
blocks of 32 values with their own scale:

- Q8_0: f16 d, 32 x int8 q           -> q * d
- Q4_0: f16 d, 16 bytes of nibbles   -> (q - 8) * d
- Q4_1: f16 d, f16 m, 16 bytes       -> q * d + m
  (value j of a block is the low nibble of byte j, value j + 16 its high nibble)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import UserError

VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
STRING, ARRAY = 8, 9
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34)}  # values per block, bytes per block


class Reader:
    def __init__(self, data: memoryview | bytes, offset: int = 0):
        self.data, self.pos = data, offset

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        s = bytes(self.data[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.take("<I"), self.take("<Q")
            if item in VALUE_FORMATS and item != 7:  # numeric arrays in one read
                fmt = VALUE_FORMATS[item]
                out = np.frombuffer(self.data, dtype=np.dtype(fmt), count=n, offset=self.pos).tolist()
                self.pos += n * struct.calcsize(fmt)
                return out
            return [self.value(item) for _ in range(n)]
        return self.take(VALUE_FORMATS[kind])


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {tensor name: float32 array}) of a GGUF file."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    r = Reader(data)
    if bytes(data[:4]) != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (its first bytes are not 'GGUF').")
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    if version < 2:
        raise UserError(f"{path} is GGUF version {version}; versions 2 and 3 are supported.")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    align = meta.get("general.alignment", 32)
    start = (r.pos + align - 1) // align * align
    tensors = {name: dequantize(data, start + offset, kind, dims, name) for name, dims, kind, offset in infos}
    return meta, tensors


def dequantize(data, offset: int, kind: int, dims: list[int], name: str = "") -> np.ndarray:
    count = int(np.prod(dims))
    shape = tuple(reversed(dims))
    if kind == F32:
        return np.frombuffer(data, np.float32, count, offset).reshape(shape).copy()
    if kind == F16:
        return np.frombuffer(data, np.float16, count, offset).astype(np.float32).reshape(shape)
    if kind == BF16:
        raw = np.frombuffer(data, np.uint16, count, offset).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    if kind not in BLOCK:
        raise UserError(f"Tensor {name!r} has ggml type {kind}, which this reader does not dequantise "
                        f"(F32, F16, BF16, Q4_0, Q4_1 and Q8_0 are supported).")
    per, size = BLOCK[kind]
    blocks = np.frombuffer(data, np.uint8, count // per * size, offset).reshape(-1, size)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    if kind == Q8_0:
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        values = q * d
    else:
        packed = blocks[:, 4:] if kind == Q4_1 else blocks[:, 2:]
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)  # (n_blocks, 32)
        if kind == Q4_1:
            values = q * d + blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        else:
            values = (q - 8) * d
    return values.reshape(shape)


# From a llama-architecture GGUF to HF's layout.

def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (its converter interleaves the two
    rotary halves of each head; HF's rotate_half keeps them split)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_config(meta: dict) -> dict:
    if meta.get("general.architecture") != "llama":
        raise UserError(f"GGUF architecture {meta.get('general.architecture')!r} is not supported; only 'llama'.")
    m = lambda key: meta[f"llama.{key}"]  # noqa: E731
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(meta["tokenizer.ggml.tokens"]),
            "hidden_size": m("embedding_length"), "intermediate_size": m("feed_forward_length"),
            "num_hidden_layers": m("block_count"), "num_attention_heads": m("attention.head_count"),
            "num_key_value_heads": m("attention.head_count_kv"), "rope_theta": m("rope.freq_base"),
            "rms_norm_eps": m("attention.layer_norm_rms_epsilon"), "max_position_embeddings": m("context_length"),
            "hidden_act": "silu", "attention_bias": False, "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}


def hf_tensors(meta: dict, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """(HF-named tensors, tied embeddings?)"""
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    out = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    if "output.weight" in tensors:
        out["lm_head.weight"] = tensors["output.weight"]
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, layer, kind, _ = name.split(".")
            if kind == "attn_q":
                t = unpermute(t, heads)
            elif kind == "attn_k":
                t = unpermute(t, kv_heads)
            out[f"model.layers.{layer}.{GGUF_NAMES[kind]}.weight"] = t
    return out, "output.weight" not in tensors


def hf_tokenizer(meta: dict):
    """A `tokenizers` byte-level BPE from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UserError(f"GGUF tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported; only 'gpt2' BPE.")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") == "smollm":  # SmolLM splits digits one by one first
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                            if kind == 3])  # 3: control tokens
    return tok


def convert(gguf_path: str | Path, out: str | Path) -> Path:
    """Write a llama GGUF file as an HF-layout checkpoint folder (fp32 safetensors)."""
    import json

    from safetensors.numpy import save_file

    meta, tensors = read(gguf_path)
    config = hf_config(meta)
    weights, tied = hf_tensors(meta, tensors)
    config["tie_word_embeddings"] = tied
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    hf_tokenizer(meta).save(str(out / "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]
    eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos,
        "bos_token": tokens[meta.get("tokenizer.ggml.bos_token_id", 0)],
        "chat_template": meta.get("tokenizer.chat_template")}, indent=2) + "\n")
    return out
