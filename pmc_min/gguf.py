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
- Q5_0: f16 d, 4 bytes of fifth bits, 16 bytes of nibbles -> (q - 16) * d
  (bit j of the little-endian uint32 is value j's fifth bit)

K-quants store super-blocks of 256 values in sub-blocks with scales of their own:
- Q4_K: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and mins, 128 bytes of nibbles
  -> (d * scale) * q - dmin * min, per sub-block of 32 (64 values share 32 bytes: low, then high nibbles)
- Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, f16 d
  -> (d * scale) * (q - 32), per sub-block of 16
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import UserError

VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
STRING, ARRAY = 8, 9
F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 8, 12, 14, 30
# values per block, bytes per block
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q8_0: "Q8_0", Q4_K: "Q4_K",
         Q6_K: "Q6_K"}


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
    try:
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
    except (struct.error, ValueError, KeyError) as e:  # past the end of the bytes, or garbage read as a type
        raise UserError(f"{path} is truncated or damaged: its header cannot be read ({e}).") from None
    align = meta.get("general.alignment", 32)
    start = (r.pos + align - 1) // align * align
    tensors = {name: dequantize(data, start + offset, kind, dims, name) for name, dims, kind, offset in infos}
    return meta, tensors


def dequantize(data, offset: int, kind: int, dims: list[int], name: str = "") -> np.ndarray:
    count = int(np.prod(dims))
    shape = tuple(reversed(dims))
    plain = {F32: 4, F16: 2, BF16: 2}
    if kind in plain and offset + count * plain[kind] > len(data):
        raise UserError(f"Tensor {name!r} ends past the end of the file: the GGUF file is truncated.")
    if kind == F32:
        return np.frombuffer(data, np.float32, count, offset).reshape(shape).copy()
    if kind == F16:
        return np.frombuffer(data, np.float16, count, offset).astype(np.float32).reshape(shape)
    if kind == BF16:
        raw = np.frombuffer(data, np.uint16, count, offset).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    if kind not in BLOCK:
        raise UserError(f"Tensor {name!r} has ggml type {kind}, which this reader does not dequantise "
                        f"(it reads {', '.join(NAMES.values())}).")
    per, size = BLOCK[kind]
    if count % per:
        raise UserError(f"Tensor {name!r} has {count} values, not a whole number of {NAMES[kind]} blocks.")
    n_bytes = count // per * size
    if offset + n_bytes > len(data):
        raise UserError(f"Tensor {name!r} ends past the end of the file: the GGUF file is truncated.")
    blocks = np.frombuffer(data, np.uint8, n_bytes, offset).reshape(-1, size)
    return QUANTS[kind](blocks).reshape(shape)


def f16(column: np.ndarray) -> np.ndarray:
    return column.copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)


def nibbles(packed: np.ndarray) -> np.ndarray:
    """(n, 16 k) bytes -> (n, 32 k): each run of 16 bytes gives its 16 low nibbles, then its 16 high."""
    n = packed.shape[0]
    runs = packed.reshape(n, -1, 1, 16) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (runs & 0x0F).reshape(n, -1)


def q8_0(b):
    return f16(b[:, :2]) * b[:, 2:].copy().view(np.int8).astype(np.float32)


def q4_0(b):
    return f16(b[:, :2]) * (nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)).astype(np.float32)


def q4_1(b):
    return f16(b[:, :2]) * nibbles(b[:, 4:]).astype(np.float32) + f16(b[:, 2:4])


def q5_0(b):
    high = (b[:, 2:6].copy().view(np.uint32) >> np.arange(32, dtype=np.uint32)) & 1  # (n, 32): bit j -> value j
    q = (nibbles(b[:, 6:]) | (high.astype(np.uint8) << 4)).astype(np.int8) - np.int8(16)
    return f16(b[:, :2]) * q.astype(np.float32)


def k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's eight 6-bit scales and mins from 12 bytes: sub-blocks 0-3 in the low 6 bits of bytes
    0-3 (scales) and 4-7 (mins); 4-7 in the nibbles of bytes 8-11, their top 2 bits in the spare
    top bits of bytes 0-3 (scales) and 4-7 (mins)."""
    low, high, top = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 63, (top & 0x0F) | ((low >> 6) << 4)], axis=1)
    mins = np.concatenate([high & 63, (top >> 4) | ((high >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def q4_k(b):
    n = b.shape[0]
    scales, mins = k_scales(b[:, 4:16])
    d, dmin = (f16(b[:, 0:2]) * scales)[..., None], (f16(b[:, 2:4]) * mins)[..., None]  # (n, 8, 1)
    q = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)  # 64 values / 32 bytes
    return d * (q & 0x0F).reshape(n, 8, 32).astype(np.float32) - dmin


def q6_k(b):
    n = b.shape[0]
    low = b[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)  # (n, 2, 2, 64)
    high = b[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = (low & 0x0F).reshape(n, 8, 32) | ((high & 3).reshape(n, 8, 32) << 4)  # value order: 8 runs of 32
    d = f16(b[:, 208:210]) * b[:, 192:208].copy().view(np.int8).astype(np.float32)  # (n, 16): one per 16 values
    return d[..., None] * (q.astype(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(np.float32)


QUANTS = {Q8_0: q8_0, Q4_0: q4_0, Q4_1: q4_1, Q5_0: q5_0, Q4_K: q4_k, Q6_K: q6_k}


# From a llama or gemma3 GGUF to HF's layout.

def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation for Llama (its converter interleaves the two
    rotary halves of each head; HF's rotate_half keeps them split). Gemma's rows are not permuted."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GEMMA_NAMES = {**GGUF_NAMES, "ffn_norm": "pre_feedforward_layernorm", "attn_q_norm": "self_attn.q_norm",
               "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"}


def hf_config(meta: dict) -> dict:
    arch = meta.get("general.architecture")
    if arch not in ("llama", "gemma3"):
        raise UserError(f"GGUF architecture {arch!r} is not supported; 'llama' and 'gemma3' are.")
    m = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
    config = {"vocab_size": len(meta["tokenizer.ggml.tokens"]), "hidden_size": m("embedding_length"),
              "intermediate_size": m("feed_forward_length"), "num_hidden_layers": m("block_count"),
              "num_attention_heads": m("attention.head_count"), "num_key_value_heads": m("attention.head_count_kv"),
              "rope_theta": m("rope.freq_base"), "rms_norm_eps": m("attention.layer_norm_rms_epsilon"),
              "max_position_embeddings": m("context_length"), "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
              "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"), "attention_bias": False}
    if arch == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **config, "hidden_act": "silu"}
    head_dim = m("attention.key_length")
    scaling = {"rope_type": "linear", "factor": m("rope.scaling.factor")} if m("rope.scaling.type") == "linear" else None
    # What llama.cpp fixes for Gemma 3 rather than store (its llama-model.cpp): five sliding layers to one global;
    # the sliding layers' rotary base 10000 unless the file says; scores scaled by head_dim^-0.5, but by
    # (width / heads)^-0.5 for the 62-layer 27B.
    scalar = config["hidden_size"] // config["num_attention_heads"] if config["num_hidden_layers"] == 62 else head_dim
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **config, "head_dim": head_dim,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": m("attention.sliding_window"),
            "rope_local_base_freq": m("rope.freq_base_swa", 10000.0), "rope_scaling": scaling,
            "query_pre_attn_scalar": scalar,
            "final_logit_softcapping": m("final_logit_softcapping"), "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")}


def hf_tensors(meta: dict, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """(HF-named tensors, tied embeddings?). llama.cpp stores Gemma's norm weights as 1 + w (its
    RMSNorm multiplies by the weight alone): 1 is taken off again."""
    arch = meta["general.architecture"]
    names, shift = (GEMMA_NAMES, 1.0) if arch == "gemma3" else (GGUF_NAMES, 0.0)
    out = {"model.embed_tokens.weight": tensors["token_embd.weight"],
           "model.norm.weight": tensors["output_norm.weight"] - np.float32(shift)}
    if "output.weight" in tensors:
        out["lm_head.weight"] = tensors["output.weight"]
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, layer, kind, _ = name.split(".")
            if kind not in names:
                raise UserError(f"GGUF tensor {name!r} has no place in a {arch} model.")
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                t = unpermute(t, meta[f"llama.attention.head_count{'_kv' if kind == 'attn_k' else ''}"])
            if kind.endswith("norm"):
                t = t - np.float32(shift)
            out[f"model.layers.{layer}.{names[kind]}.weight"] = t
    return out, "output.weight" not in tensors


def hf_tokenizer(meta: dict):
    """A `tokenizers` tokenizer from the GGUF vocabulary: byte-level BPE from its merges (gpt2), or
    Gemma's SentencePiece BPE (llama), whose merges the file does not store."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama" and meta.get("general.architecture") == "gemma3":
        tok = sentencepiece_bpe(meta)
    elif kind == "gpt2":
        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if meta.get("tokenizer.ggml.pre") == "smollm":  # SmolLM splits digits one by one first
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tok.decoder = decoders.ByteLevel()
    else:
        raise UserError(f"GGUF tokenizer {kind!r} is not supported; 'gpt2' BPE and Gemma's SentencePiece are.")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                            if kind == 3])  # 3: control tokens
    vocab = tok.get_vocab()  # 4: user-defined pieces ("\n\n", "<td>"), matched whole, as SentencePiece does
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types)
                    if kind == 4 and t in vocab])
    return tok


def sentencepiece_bpe(meta: dict):
    """Gemma's SentencePiece BPE as a `tokenizers` BPE: spaces written as "▁", bytes the vocabulary
    lacks as <0xNN> pieces (byte fallback). The file stores no merges, so they are rebuilt from
    the vocabulary: every split of a piece into two pieces, ranked by the piece's place in the file
    (not by its score, which for Gemma does not follow the merge order), longer left part first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    # Runs of spaces are stored as spaces; as pieces they are runs of "▁".
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in meta["tokenizer.ggml.tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = sorted(vocab, key=vocab.get)  # a piece listed twice ranks by its last place, as it is looked up
    merges = [(t[:k], t[k:]) for t in ranked for k in range(len(t) - 1, 0, -1) if t[:k] in vocab and t[k:] in vocab]
    unk = tokens[meta.get("tokenizer.ggml.unknown_token_id", 0)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    if meta.get("tokenizer.ggml.add_bos_token", True):  # SentencePiece's default; what transformers adds by default
        bos = tokens[meta["tokenizer.ggml.bos_token_id"]]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, meta["tokenizer.ggml.bos_token_id"])])
    return tok


def convert(gguf_path: str | Path, out: str | Path) -> Path:
    """Write a llama or gemma3 GGUF file as an HF-layout checkpoint folder (fp32 safetensors)."""
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
    pad = tokens[meta["tokenizer.ggml.padding_token_id"]] if "tokenizer.ggml.padding_token_id" in meta else eos
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
        "bos_token": tokens[meta.get("tokenizer.ggml.bos_token_id", 0)],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")),
        "chat_template": meta.get("tokenizer.chat_template")}, indent=2) + "\n")
    return out
