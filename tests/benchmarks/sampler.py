"""Tokens/s of pmc_min's sampler and of transformers' generate on the same
model, same prompts, same n and settings (T 1.25, top_p 0.95, top_k 50,
the PMC Phi config), and the ratio: a random Phi, or with --model the real
SmolLM2-135M-Instruct weights on TOFU questions. eos is made unreachable so
both write exactly prompts x n x max_new_tokens tokens.

    python tests/benchmarks/sampler.py                        # tiny Phi on the CPU
    python tests/benchmarks/sampler.py --compile              # pmc_min's decode step compiled
    python tests/benchmarks/sampler.py --size phi-1_5 --device cuda --dtype bfloat16 \\
        --prompts 64 --n 5 --max-new-tokens 200              # phi-1.5-sized, random weights
    python tests/benchmarks/sampler.py --model smollm2-135m --temperature 0.9 --max-new-tokens 48
    python tests/benchmarks/sampler.py --model gemma-3-270m --prompts 8 --max-new-tokens 48 --repeats 2
    ... --full-filter    # pmc_min filtering the whole vocabulary, as before its draw on the k listed tokens
"""

import argparse
import tempfile
import time

import torch
from transformers import PhiConfig, PhiForCausalLM

import pmc_min
from pmc_min.sample import Sampling, generate_ids

SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                 num_attention_heads=8),
    "phi-1_5": dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                    num_attention_heads=32),
}

parser = argparse.ArgumentParser()
parser.add_argument("--size", choices=SIZES, default="tiny")
parser.add_argument("--model", choices=["smollm2-135m", "gemma-3-270m"], help="real weights instead of a random "
                    "Phi: SmolLM2-135M-Instruct (chat template) or Gemma-3-270M on TOFU forget01 questions")
parser.add_argument("--data-dir", help="with --model: TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--device", default="cpu")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
parser.add_argument("--prompts", type=int, default=16)
parser.add_argument("--n", type=int, default=5)
parser.add_argument("--max-new-tokens", type=int, default=64)
parser.add_argument("--temperature", type=float, default=1.25)
parser.add_argument("--compile", action="store_true", help="torch.compile pmc_min's decode step")
parser.add_argument("--repeats", type=int, default=5, help="timed runs of each generator (best of)")
parser.add_argument("--full-filter", action="store_true", help="pmc_min without its draw on the k listed tokens")
args = parser.parse_args()
dtype = getattr(torch, args.dtype)

if args.model:
    from transformers import AutoModelForCausalLM

    from pmc_min.data import load_split, resolve_data_dir
    from pmc_min.qa import prompt

    folder = pmc_min.checkpoint.resolve(args.model)
    ours, tokenizer = pmc_min.load(folder, device=args.device, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).to(args.device).eval()
    questions = [r["question"] for r in load_split(resolve_data_dir(args.data_dir), "forget01")][:args.prompts]
    prompts = tokenizer.encode_batch([prompt(q, tokenizer.chat) for q in questions], bos=True)
    vocab_size, eos, pad = ours.config.vocab_size, tokenizer.eos_id, tokenizer.pad_id
    label = f"{args.model} (real weights)"
else:
    torch.manual_seed(0)
    cfg = PhiConfig(**SIZES[args.size], partial_rotary_factor=0.5, bos_token_id=None, eos_token_id=0,
                    pad_token_id=0)
    with torch.device(args.device):
        hf = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.lm_head.bias[0] = -1e4  # eos (id 0) is never drawn
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        from tokenizers import Tokenizer, models
        Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]")).save(f"{d}/tokenizer.json")
        ours, _ = pmc_min.load(d, device=args.device, dtype=dtype)
    hf = hf.to(device=args.device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, cfg.vocab_size, (int(torch.randint(8, 40, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(args.prompts)]
    vocab_size, eos, pad = cfg.vocab_size, 0, 0
    label = f"{args.size} Phi"
settings = dict(temperature=args.temperature, top_p=0.95, top_k=50)
total = args.prompts * args.n * args.max_new_tokens
P = max(map(len, prompts))
# left-padded, for transformers
padded = torch.tensor([[pad] * (P - len(p)) + p for p in prompts], device=args.device)
mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=args.device)


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours():
    # with real weights eos can be drawn: an id outside the vocabulary as eos makes every row run to the end
    out = generate_ids(ours, prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                       eos_id=eos if not args.model else vocab_size, pad_id=pad, seed=0,
                       compile=args.compile, max_batch_tokens=1 << 20, sampling=Sampling(**settings))
    assert sum(len(o) for per in out for o in per) == total


def run_hf():
    with torch.no_grad():
        out = hf.generate(input_ids=padded, attention_mask=mask, do_sample=True, num_return_sequences=args.n,
                          max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                          eos_token_id=eos, pad_token_id=pad, **settings)
    assert out.shape == (args.prompts * args.n, P + args.max_new_tokens)


def timed(fns, repeats=5):
    """Best wall time of each function; the functions take turns, so that a slow
    spell of a noisy machine does not fall on one of them only."""
    for fn in fns:
        fn()  # warm-up (and compilation)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def logits_agreement():
    """Both models on the left-padded prompts: the largest logit difference at real
    tokens (relative to the largest logit) and how often their argmax agrees."""
    with torch.no_grad():
        a, b = ours(padded, mask).float(), hf(input_ids=padded, attention_mask=mask).logits.float()
    if not args.model:
        a, b = a[..., 1:], b[..., 1:]  # leave out eos, pinned at -1e4
    real = mask.bool()
    diff = (a - b).abs()[real].max().item() / b[real].abs().max().item()
    return diff, (a.argmax(-1) == b.argmax(-1))[real].float().mean().item()


diff, agree = logits_agreement()
if args.full_filter:
    import pmc_min.sample
    pmc_min.sample.draw_listed = lambda *a: None  # every draw through filter_logits over the whole vocabulary
t_hf, t_ours = timed([run_hf, run_ours], args.repeats)
print(f"{label} ({ours.num_parameters():,} params), {args.device} {args.dtype}, {args.prompts} prompts x "
      f"n={args.n}, {args.max_new_tokens} new tokens, T={args.temperature} top_p=0.95 top_k=50")
print(f"same model: logits differ by at most {diff:.1e} of the largest logit; argmax agrees on {agree:.1%} of tokens")
print(f"transformers generate: {total / t_hf:10,.0f} tokens/s")
print(f"pmc_min generate_ids:  {total / t_ours:10,.0f} tokens/s")
print(f"ratio pmc_min / transformers: {t_hf / t_ours:.2f}x")
