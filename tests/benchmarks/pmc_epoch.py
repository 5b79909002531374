"""Seconds per PMC epoch on a TOFU forget split at Phi-1.5's size.

The paper's settings (UnlearnConfig's defaults: 16 questions x 4 accumulated
micro-batches, n = 5 samples, 200 tokens, T 1.25, top_p 0.95, top_k 50) on a
model with microsoft/phi-1_5's config and random weights, trained as run.py
trains it (float32 weights, bf16 autocast on CUDA, samples drawn from a bf16
copy of the weights). The tokenizer is a byte-level BPE trained on TOFU;
tokens it lacks get a large negative lm_head bias so that every sample
decodes to text. A random model almost never writes
eos, so nearly every sample runs the whole 200-token budget: an upper bound
for a fine-tuned model, whose answers end after a few dozen tokens.

    python tests/benchmarks/pmc_epoch.py --data-dir tofu --device cuda
    torchrun --nproc-per-node 1 tests/benchmarks/pmc_epoch.py --data-dir tofu [--fsdp]
    python tests/benchmarks/pmc_epoch.py --data-dir tofu --layers 2 --limit 16   # CPU smoke run

Under torchrun each rank draws and trains its share (pmc_min.distributed), rank 0 prints, and
the peak GPU memory is each rank's.
"""

import argparse
import time

import torch
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from pmc_min import distributed, pmc, train
from pmc_min.data import RETAIN_OF, load_split
from pmc_min.checkpoint import config_from_hf
from pmc_min.model import Transformer
from pmc_min.tokenizer import Tokenizer

PHI_1_5 = dict(model_type="phi", vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
               num_attention_heads=32, partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5,
               hidden_act="gelu_new", max_position_embeddings=2048, bos_token_id=None, eos_token_id=None)

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", required=True, help="folder of TOFU JSON Lines files")
parser.add_argument("--split", default="forget10")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--layers", type=int, default=24)
parser.add_argument("--hidden-size", type=int, default=2048, help="smaller for a smoke run (heads stay 32)")
parser.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 rather than DDP")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--limit", type=int, help="only the first N forget questions")
parser.add_argument("--compile", action="store_true", help="sample with a compiled decode step (CUDA graphs)")
parser.add_argument("--sample-dtype", help="as run.py: bfloat16 on a GPU, else the model's own")
args = parser.parse_args()
device = torch.device(distributed.init(args.device))


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


forget, retain, full = (load_split(args.data_dir, s) for s in (args.split, RETAIN_OF[args.split], "full"))
forget = forget[:args.limit]
bpe = HFTokenizer(models.BPE())
bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
bpe.train_from_iterator([r["question"] + " " + r["answer"] for r in full],
                        trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"],
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tokenizer = Tokenizer(bpe, "<|endoftext|>")

torch.manual_seed(0)
with device:
    model = Transformer(config_from_hf(PHI_1_5 | {"num_hidden_layers": args.layers, "hidden_size": args.hidden_size,
                                                  "intermediate_size": 4 * args.hidden_size}))
with torch.no_grad():
    model.lm_head.bias[tokenizer.vocab_size:] = -1e4

timings: dict[str, float] = {}


def timed(name, fn):
    """fn, with its wall time added to timings[name]."""
    def wrapper(*a, **k):
        sync()
        t = time.perf_counter()
        out = fn(*a, **k)
        sync()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return out
    return wrapper


pmc.initial_answers = timed("y0", pmc.initial_answers)
pmc.resample = timed("sampling", pmc.resample)
train.forget_nll = timed("forget_nll", train.forget_nll)
stamps = []


def on_epoch_end(state, engine):
    sync()
    stamps.append((time.perf_counter(), dict(timings)))


sample_dtype = args.sample_dtype or ("bfloat16" if device.type == "cuda" else None)
cfg = train.UnlearnConfig(epochs=args.epochs, compile=args.compile, sample_dtype=sample_dtype, fsdp=args.fsdp)
sync()
start = time.perf_counter()
curves = train.unlearn(model, tokenizer, forget, retain, cfg, on_epoch_end=on_epoch_end, progress=False)
lengths = [len(tokenizer.encode(a)) for a in curves["final_picks"] if a is not None]

peak = distributed.gather([torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0],
                          distributed.size())  # one number per rank
if not distributed.main_rank():
    raise SystemExit(distributed.close())
gpu = torch.cuda.get_device_name() if device.type == "cuda" else ""
mode = f"{'compiled' if cfg.compile else 'eager'} sampling in {cfg.sample_dtype or 'float32'}"
engine = "one process" if distributed.size() == 1 and not args.fsdp else (
    f"torchrun, {distributed.size()} rank(s), {'FSDP2' if args.fsdp else 'DDP'}")
print(f"{model.num_parameters():,} parameters ({args.layers} layers), {device} {gpu}, {engine}, {args.split}: "
      f"{len(forget)} questions, n={cfg.n_samples}, {mode}, batch {cfg.batch_size} x {cfg.grad_accum}, "
      f"max_length {cfg.max_length}")
print(f"y0 (greedy answers, once): {stamps[0][1]['y0']:.1f} s; picked answers average "
      f"{sum(lengths) / len(lengths):.0f} tokens")
previous, before = start + stamps[0][1]["y0"], {"sampling": 0.0, "forget_nll": 0.0}
for epoch, (t, acc) in enumerate(stamps, start=1):
    sampling, nll = acc["sampling"] - before["sampling"], acc["forget_nll"] - before["forget_nll"]
    total = t - previous
    print(f"epoch {epoch}: {total:.1f} s = sampling {sampling:.1f} s + training {total - sampling - nll:.1f} s "
          f"+ forget NLL {nll:.1f} s")
    previous, before = t, acc
if device.type == "cuda":
    print(f"peak GPU memory per rank: {', '.join(f'{p:.1f}' for p in peak)} GiB")
distributed.close()
