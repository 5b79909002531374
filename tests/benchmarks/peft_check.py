"""Does a finished LoRA run's adapter, loaded by peft onto the model the run started from,
compute what the run's merged model computes?

    python tests/benchmarks/peft_check.py runs/tiny-pmc-forget10     # after python run.py --lora 8

Reads <run>/adapter (PEFT's layout; its base_model_name_or_path names the start model) and
<run>/model (the merged model), runs both in transformers on the run's first 8 forget
questions as prompted, and prints the largest logit difference relative to the largest logit.
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import pmc_min
from pmc_min.data import load_split
from pmc_min.qa import prompt

run = Path(sys.argv[1])
config = json.loads((run / "adapter" / "adapter_config.json").read_text())
results = json.loads((run / "results.json").read_text())
base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], torch_dtype=torch.float32)
adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
merged = AutoModelForCausalLM.from_pretrained(run / "model", torch_dtype=torch.float32).eval()
_, tok = pmc_min.load(run / "model")
data_dir = results["data_dir"]
questions = [r["question"] for r in load_split(data_dir, results["split"])[:8]]
rows = tok.encode_batch([prompt(q, tok.chat) for q in questions], bos=True)
width = max(map(len, rows))
ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
with torch.no_grad():
    a = adapted(input_ids=ids, attention_mask=mask).logits
    b = merged(input_ids=ids, attention_mask=mask).logits
real = mask.bool()
diff = (a - b)[real].abs().max().item() / b[real].abs().max().item()
print(f"{run}: rank {config['r']}, alpha {config['lora_alpha']}, targets {', '.join(config['target_modules'])}")
print(f"peft's adapted base against the merged model: largest logit difference {diff:.1e} of the largest logit "
      f"({int(real.sum())} positions); argmax agrees on {(a.argmax(-1) == b.argmax(-1))[real].float().mean():.1%}")
