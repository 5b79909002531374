"""The memory and time of a PMC run on 1 and 8 H100s, worked out on paper (docs/distributed.md).

    python tests/benchmarks/memory_table.py

Nothing here is measured except the anchor of the time column: one compiled bf16 draw of
16 questions x 5 answers x 200 tokens at Phi-1.5's size took 0.83 s on one H100
(docs/benchmarks.md). Per rank, in GiB:

- float32 master weights, gradients and AdamW's two moments: 4 + 4 + 8 bytes a parameter
  (FSDP2: a 1/N shard of each);
- the plain copy PMC samples from: bf16, 2 bytes a parameter (under DDP and in one process
  the training weights are float32 and the bf16 copy comes on top; under FSDP it is the only
  full copy);
- activations of one micro-batch, forget and retain rows both kept for the backward pass,
  bf16, without recomputation and with fused attention (Korthikanti et al. 2022: 34 bytes per
  token, layer and unit of width), plus the float32 logits three times over (logits,
  log-softmax, its gradient); under N ranks each holds 1/N of the rows;
- the KV cache of one draw: each prompt's keys and values once (shared by its n samples) and
  n rows of 200 generated tokens, bf16; under N ranks each draws 1/N of the prompts.

With LoRA (`--lora 16`, every attention and MLP projection, one GPU), as pmc_min runs it: the
frozen base stays float32 (4 bytes a parameter, no gradient, no AdamW state), the adapters
train in float32 with AdamW (16 bytes an adapter parameter: rank x (in + out) per projection),
PMC samples from a bf16 copy with the adapters merged in (2 bytes a parameter), and the
activations are the full run's (the backward pass still runs through every frozen layer), and
training takes 4 rather than 6 x parameters x tokens FLOPs (no weight gradients for the base).
A bf16 frozen base (2 bytes a parameter) would save another 2 bytes a parameter; pmc_min does
not offer it.

Time per epoch of forget10 (400 questions): drawing, scaled from the anchor by the bytes of
bf16 weights a decode step reads (decoding is bound by memory bandwidth, so splitting a
draw's rows over 8 GPUs shortens it little: every rank still reads all weights at each of
the 200 steps; taken here as not at all), and training, 6 x parameters x tokens FLOPs at 40% of an H100's 989 bf16
TFLOP/s.
"""

from __future__ import annotations

GIB = 2 ** 30

# parameters, layers, width, KV heads x head dim, vocabulary, preset: (batch, accum, n, epochs)
MODELS = {
    "Phi-1.5": (1.418e9, 24, 2048, 32 * 64, 51200, (16, 4, 5, 40)),
    "Llama-3.2-3B": (3.213e9, 28, 3072, 8 * 128, 128256, (8, 2, 20, 30)),
    "Llama-3.1-8B": (8.030e9, 32, 4096, 8 * 128, 128256, (8, 2, 20, 30)),
    "12B (Gemma-3-12B's sizes)": (12.0e9, 48, 3840, 8 * 256, 262144, (8, 2, 20, 30)),
}
# LoRA: the sum of (in + out) over the adapted projections of one layer (q, k, v, o, gate, up, down)
LORA_DIMS = {"Llama-3.1-8B": 2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336),
             "12B (Gemma-3-12B's sizes)": 2 * (3840 + 4096) + 2 * (3840 + 2048) + 3 * (3840 + 15360)}
LORA_RANK = 16
PROMPT, NEW, QUESTIONS = 60, 200, 400  # tokens of a prompt (chat templates: about 60), new tokens, forget10
ANCHOR_S, ANCHOR_P = 0.83, 1.418e9  # one Phi-1.5 draw (80 rows) on one H100
FLOPS = 0.4 * 989e12


def per_rank(params, layers, width, kv, vocab, preset, ranks: int, fsdp: bool, lora_params: float = 0) -> dict:
    batch, accum, n, _ = preset
    rows = 2 * batch / ranks  # forget and retain rows of a micro-batch
    states = 16 * params / (ranks if fsdp else 1) if not lora_params else 4 * params + 16 * lora_params
    copy = 2 * params
    acts = rows * PROMPT * 2 * layers * width * 34 + 3 * 4 * rows * PROMPT * 2 * vocab  # answers ~ prompt length
    kv_token = 2 * layers * kv * 2
    kv_cache = kv_token * (batch * PROMPT + batch * n * NEW) / ranks
    return {"states": states / GIB, "copy": copy / GIB, "acts": acts / GIB, "kv": kv_cache / GIB,
            "total": (states + copy + acts + kv_cache) / GIB}


def epoch_seconds(params, preset, ranks: int) -> tuple[float, float]:
    batch, accum, n, _ = preset
    draws = QUESTIONS / batch
    draw = ANCHOR_S * params / ANCHOR_P  # bound by reading the weights at every step, whatever the rows
    tokens = QUESTIONS * 2 * 2 * PROMPT  # forget and retain rows, prompt and answer
    return draws * draw, 6 * params * tokens / (FLOPS * ranks)


def main() -> None:
    print("| model | setup | fp32 weights + grads + AdamW | bf16 sampling copy | activations | KV cache of a draw "
          "| total per GPU | fits 80 GB | epoch: drawing + training |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (params, layers, width, kv, vocab, preset) in MODELS.items():
        for setup, ranks, fsdp in (("1 GPU", 1, False), ("8 GPUs, DDP", 8, False), ("8 GPUs, FSDP2", 8, True)):
            m = per_rank(params, layers, width, kv, vocab, preset, ranks, fsdp)
            draw, train = epoch_seconds(params, preset, ranks)
            fits = "yes" if m["total"] * GIB < 80e9 * 0.92 else "no"  # leave room for the allocator
            print(f"| {name} | {setup} | {m['states']:.1f} | {m['copy']:.1f} | {m['acts']:.1f} | {m['kv']:.1f} | "
                  f"{m['total']:.1f} | {fits} | {draw:.0f} s + {train:.1f} s |")
        if name in LORA_DIMS:
            adapters = LORA_RANK * LORA_DIMS[name] * layers
            m = per_rank(params, layers, width, kv, vocab, preset, 1, False, lora_params=adapters)
            draw, train = epoch_seconds(params, preset, 1)
            fits = "yes" if m["total"] * GIB < 80e9 * 0.92 else "no"
            print(f"| {name} | 1 GPU, LoRA {LORA_RANK} ({adapters / 1e6:.0f}M adapter parameters; fp32 frozen base) | "
                  f"{m['states']:.1f} | {m['copy']:.1f} | {m['acts']:.1f} | {m['kv']:.1f} | {m['total']:.1f} | {fits} "
                  f"| {draw:.0f} s + {train * 2 / 3:.1f} s |")


if __name__ == "__main__":
    main()
