"""How far a real model's work is from what this CPU can do: the practical peak of a large
float32 and a large bfloat16 matrix product (FLOP/s), then, on SmolLM2-135M-Instruct's
weights, the achieved FLOP/s of PMC's draw (8 forget01 questions in the chat template, n 5,
48 new tokens, T 1.25, top-p 0.95, top-k 50), of a fine-tuning step (8 TOFU rows, forward,
backward and AdamW) and of a PMC step (its draw, the rewards, and the training step on the
collapse and retain rows), each as a fraction of the float32 peak, with a profile split.

    python tests/benchmarks/cpu_peak.py --data-dir tofu [--model smollm2-135m] [--before] [--bf16]

--before measures the code as it was before its two CPU changes: the sampler filtering the
whole vocabulary at every step (no `sample.draw_listed`), and the losses running the output
layer at every position (no `losses.labelled_nll`). --bf16 measures what a run does by default on
a CPU with bfloat16 products: draws from a bfloat16 copy of the weights, training steps under
bfloat16 autocast (the fractions are then also given of the bfloat16 peak).

FLOPs are counted by torch's FlopCounterMode (matrix products and attention; element-wise
work counts nothing, so the fractions are of useful matrix work). Each workload is timed best
of 3 after a warm-up. The profile (torch.profiler, one more run) splits the wall time into:
matrix products (mm, addmm, bmm outside attention), attention (the attention function and the
KV cache's), the sampling filter (temperature, top-k, top-p and the draw), other element-wise
and copy operations, and Python overhead (wall time outside any operator).
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import pmc_min
from pmc_min import gemma, kv_cache, model as model_module, sample
from pmc_min.data import load_split, resolve_data_dir
from pmc_min.engine import Share, optimizer_and_schedule, optimizer_step
from pmc_min.method import nll
from pmc_min.pmc import BestSoFar, collapse_batch, resample
from pmc_min.qa import encode_rows, greedy_answers, prompt

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--data-dir", help="TOFU's JSON Lines files (default: the hub dataset locuslab/TOFU)")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--before", action="store_true", help="without the listed-token draw and the labelled-only head")
parser.add_argument("--bf16", action="store_true", help="draws from a bfloat16 copy, training under bfloat16 autocast")
args = parser.parse_args()
if args.before:
    from pmc_min import qa
    from pmc_min.losses import next_token_nll
    sample.draw_listed = lambda *a: None
    qa.labelled_nll = lambda model, ids, mask, labels: next_token_nll(model(ids, mask), labels)
torch.manual_seed(0)


def matmul_peak(dtype, size=2048, repeats=5) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size ** 3 / best


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_of(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


LABELS = [("sampling filter", sample, "pick_next"), ("attention", model_module, "attention"),
          ("attention", gemma, "attention")]


def labelled(fn):
    """Run fn with the sampler's filter and the attention functions wrapped in profiler ranges."""
    originals = {}
    for label, module, name in LABELS:
        original = originals[(module, name)] = getattr(module, name)

        def wrapper(*a, _f=original, _label=label, **k):
            with torch.profiler.record_function(_label):
                return _f(*a, **k)
        setattr(module, name, wrapper)
    caches = [c for c in vars(kv_cache).values() if isinstance(c, type) and hasattr(c, "attend")]
    attends = {c: c.attend for c in caches}
    for c in caches:
        def attend(self, *a, _f=attends[c], **k):
            with torch.profiler.record_function("attention"):
                return _f(self, *a, **k)
        c.attend = attend
    try:
        return fn()
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)
        for c in caches:
            c.attend = attends[c]


MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


def profile_split(fn) -> dict[str, float]:
    """Fractions of the wall time by kind of work (see the module's docstring)."""
    with torch.profiler.profile() as prof:
        wall = timed(lambda: labelled(fn))
    split = dict.fromkeys(["matrix products", "attention", "sampling filter", "element-wise and copies"], 0.0)
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CPU or not e.name.startswith("aten::"):
            continue
        parent, label = e.cpu_parent, None
        while parent is not None:
            if parent.name in ("attention", "sampling filter"):
                label = parent.name
            parent = parent.cpu_parent
        kind = label or ("matrix products" if e.name in MATMUL else "element-wise and copies")
        split[kind] += e.self_cpu_time_total / 1e6
    split["Python overhead"] = max(0.0, wall - sum(split.values()))
    return {k: v / wall for k, v in split.items()}


folder = pmc_min.checkpoint.resolve(args.model)
model, tok = pmc_min.load(folder)
data_dir = resolve_data_dir(args.data_dir)
forget = load_split(data_dir, "forget01")[:8]
retain = load_split(data_dir, "retain99")[:8]
questions = [r["question"] for r in forget]
prompts = tok.encode_batch([prompt(q, tok.chat) for q in questions], bos=True)
settings = pmc_min.Sampling(1.25, 0.95, 50)
y0 = greedy_answers(model, tok, questions, 160)
opt, sched = optimizer_and_schedule(model, 1e-5, 0.01, 10 ** 6, 0)
dtype = "bfloat16" if args.bf16 else "float32"
sampler = pmc_min.checkpoint.build(model.config, dict(model.state_dict()), dtype=torch.bfloat16) if args.bf16 else model


def draw():
    sample.generate_ids(sampler, prompts, n=5, max_new_tokens=48, eos_id=model.config.vocab_size, pad_id=tok.pad_id,
                        sampling=settings, seed=0)


def finetune_step():
    model.train()
    with model_module.autocast(model.device, dtype):
        loss = nll(model, Share.whole(encode_rows(tok, forget, 160)))
    loss.backward()
    optimizer_step(model, opt, sched)


def pmc_step():
    cache = BestSoFar()
    if args.bf16:
        sampler.load_weights_from(model)
    resample(sampler, tok, cache, list(range(8)), questions, y0, n=5, sampling=settings, max_length=160)
    model.train()
    collapse = collapse_batch(tok, questions, [cache.answers[q] for q in range(8)], 160)
    with model_module.autocast(model.device, dtype):
        loss = nll(model, Share.whole(collapse)) + 1.25 * nll(model, Share.whole(encode_rows(tok, retain, 160)))
    loss.backward()
    optimizer_step(model, opt, sched)


peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
print(f"{args.model} ({model.num_parameters():,} parameters), {torch.get_num_threads()} threads"
      f"{', as before the CPU changes' if args.before else ''}{', bfloat16 draws and autocast' if args.bf16 else ''}")
print(f"peak: float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s "
      f"(a {2048}^3 matmul, best of 5)")
print("| work | seconds | GFLOP | achieved GFLOP/s | of the float32 peak | of the bfloat16 peak | matrix products | attention | "
      "sampling filter | element-wise and copies | Python overhead |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, fn in [("draw (8 x 5 x 48 tokens)", draw), ("fine-tuning step (8 rows)", finetune_step),
                 ("PMC step (draw, rewards, training)", pmc_step)]:
    fn()  # warm-up
    flops = flops_of(fn)
    best = min(timed(fn) for _ in range(args.repeats))
    split = profile_split(fn)
    print(f"| {name} | {best:.2f} | {flops / 1e9:.1f} | {flops / best / 1e9:.1f} | "
          f"{flops / best / peaks['float32']:.1%} | {flops / best / peaks['bfloat16']:.1%} | " + " | ".join(f"{v:.0%}" for v in split.values()) + " |",
          flush=True)
