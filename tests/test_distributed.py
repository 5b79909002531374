"""torchrun against one process, on the CPU (gloo, 2 processes): one optimizer step under
DDP and FSDP2 equals the single-process step; whole runs make the same picks and scores;
a killed torchrun job resumes to the same results.json."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pmc_min import distributed
from pmc_min.checkpoint import load, save
from pmc_min.data import load_split
from pmc_min.tiny import train_tokenizer
from pmc_min.tiny_data import make_dataset
from pmc_min.train import UnlearnConfig, finetune, unlearn
from helpers import ROOT, comparable, run_py, write_hf_phi

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small Phi with the tiny default's tokenizer, fine-tuned until it answers some of the
    synthetic TOFU questions, so that its answers, samples and scores are not all empty."""
    root = tmp_path_factory.mktemp("distributed")
    make_dataset(root / "data")
    write_hf_phi(root / "random", seed=5, vocab_size=1024, hidden_size=64, intermediate_size=128)
    train_tokenizer(root / "data").save(root / "random")
    model, tok = load(root / "random")
    rows = load_split(root / "data", "forget05")[:40] + load_split(root / "data", "retain95")[:40]
    finetune(model, tok, rows, epochs=40, lr=3e-3, batch_size=16, max_length=64, progress=False)
    save(model, tok, root / "phi")
    return root


ROWS = 7  # micro-batches of 3, 3 and 1 rows: shares of 2 and 1, and a rank left without rows


def one_step(folder: Path, method: str, lora: bool = False) -> tuple[dict, list]:
    """The weights after the optimizer steps of two epochs of `method`, one step each of 3 micro-batches
    accumulated (the first step's learning rate is 0, the warmup's start, so the second moves the
    weights), and AdamW's first moments, which are linear in the two steps' gradients."""
    model, tok = load(folder)
    forget = load_split(folder.parent / "data", "forget05")[:ROWS]
    retain = load_split(folder.parent / "data", "retain95")[:ROWS]
    cfg = UnlearnConfig(method=method, epochs=3, lr=5e-5, batch_size=3, grad_accum=3, max_length=64, n_samples=3,
                        fsdp=os.environ.get("FSDP") == "1", lora_rank=4 if lora else None)
    moments = []

    def first_moments(state, engine):
        opt = engine.opt
        moments[:] = [getattr(m, "full_tensor", lambda m=m: m)().clone()
                      for m in (opt.state[p]["exp_avg"] for p in engine.module.parameters() if p.requires_grad)]

    curves = unlearn(model, tok, forget, retain, cfg, progress=False, on_epoch_end=first_moments)
    assert curves["step"] == [1, 2]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, moments


def step_worker(rank: int, port: int, folder: Path, method: str, fsdp: bool, out: Path, lora: bool = False) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), FSDP="1" if fsdp else "0")
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        result = one_step(folder, method, lora)
        if rank == 0:
            torch.save(result, out)
    finally:
        distributed.close()


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
@pytest.mark.parametrize("method", ["pmc", "npo"])  # token means (every NLL) and row means (NPO, SimNPO)
def test_one_optimizer_step_equals_the_single_process_step(setup, tmp_path, method, engine):
    single, single_m = one_step(setup / "phi", method)
    out = tmp_path / "weights.pt"
    mp.spawn(step_worker, args=(free_port(), setup / "phi", method, engine == "fsdp", out), nprocs=WORLD)
    shared, shared_m = torch.load(out)
    before, _ = load(setup / "phi")
    moved = max((single[k] - v).abs().max().item() for k, v in before.state_dict().items())
    assert moved > 2e-5  # the step did something (AdamW moves a weight by up to about lr)
    # The keys' bias shifts every score of a query alike, which the softmax ignores: its gradient is 0 up to
    # rounding, and AdamW turns rounding into steps of up to lr. Every other weight must agree.
    assert max((single[k] - shared[k]).abs().max().item() for k in single if "k_proj.bias" not in k) < 1e-5
    # The gradients themselves, through AdamW's first moment: far tighter than the weights, which
    # AdamW's normalisation moves by about lr wherever a gradient is near 0, whatever its rounding.
    assert len(single_m) == len(shared_m) == len(list(before.parameters()))
    for a, b in zip(single_m, shared_m):
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item() + 1e-9


def test_one_lora_step_under_ddp_equals_the_single_process_step(setup, tmp_path):
    """LoRA under DistributedDataParallel: the frozen base stays out of the reduction, and the
    adapters' step and AdamW moments are the single process's."""
    single, single_m = one_step(setup / "phi", "pmc", lora=True)
    out = tmp_path / "weights.pt"
    mp.spawn(step_worker, args=(free_port(), setup / "phi", "pmc", False, out, True), nprocs=WORLD)
    shared, shared_m = torch.load(out)
    assert max(single[k].abs().max().item() for k in single if "lora_B" in k) > 2e-5  # B left zero: it moved
    assert max((single[k] - shared[k]).abs().max().item() for k in single) < 1e-5
    assert len(single_m) == len(shared_m) == 2 * sum(1 for k in single if "lora_A" in k)
    for a, b in zip(single_m, shared_m):
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item() + 1e-9


def run_args(setup, out):
    return ["--model", str(setup / "phi"), "--data-dir", str(setup / "data"), "--split", "forget05",
            "--finetune-epochs", "0", "--epochs", "3", "--batch-size", "8", "--grad-accum", "1", "--n-samples", "3",
            "--max-length", "64", "--limit", "40", "--lr", "1e-3", "--no-progress", "--device", "cpu",
            "--out", str(out)]


def torchrun(*args, script=ROOT / "run.py", before=()):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port",
               str(free_port()), str(script), *before, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single(setup):
    out = setup / "single"
    done = run_py(*run_args(setup, out), timeout=600)
    assert done.returncode == 0, done.stderr
    return comparable(out)


@pytest.fixture(scope="module")
def ddp(setup):
    out = setup / "ddp"
    done = torchrun(*run_args(setup, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return comparable(out)


def agree(a: dict, b: dict) -> None:
    picks_a, picks_b = a["curves"]["final_picks"], b["curves"]["final_picks"]
    same = sum(x == y for x, y in zip(picks_a, picks_b, strict=True)) / len(picks_a)
    assert same >= 0.9, same
    assert a["curves"]["y0"] == b["curves"]["y0"]
    for key in ("unlearn_quality", "utility"):
        assert abs(a["after"][key] - b["after"][key]) <= 1, key
    assert a["before"] == b["before"]


def test_two_ranks_under_ddp_agree_with_one_process(single, ddp):
    assert 0 < single["before"]["utility"] and single["after"]["unlearn_quality"] > single["before"]["unlearn_quality"]
    agree(single, ddp)


def test_two_ranks_under_fsdp_agree_with_one_process(setup, single):
    out = setup / "fsdp"
    done = torchrun(*run_args(setup, out), "--fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    agree(single, comparable(out))
    assert (out / "checkpoints" / "epoch-0003" / "sharded" / ".metadata").is_file()
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(out / "model")  # the consolidated model loads in transformers
    ours, _ = load(out / "model")
    ids = torch.tensor([[5, 9, 27, 100]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_torchrun_killed_mid_run_resumes_to_the_same_results(setup, ddp):
    out = setup / "killed"
    # 5 optimizer steps an epoch (40 questions in batches of 8): every rank kills itself just before the
    # second step of epoch 2, with epoch 1's checkpoint written
    killed = torchrun(*run_args(setup, out), script=ROOT / "tests" / "killed_run.py", before=["7"])
    assert killed.returncode != 0
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001"
    assert not (out / "results.json").exists()
    resumed = torchrun("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(out) == ddp


def test_a_torchrun_checkpoint_does_not_resume_in_one_process(setup, ddp):
    done = run_py("--resume", str(setup / "ddp"))
    assert done.returncode == 2 and "resumes under torchrun" in done.stderr and "Traceback" not in done.stderr


def test_fsdp_without_torchrun_fails_in_one_sentence(setup, tmp_path):
    done = run_py(*run_args(setup, tmp_path / "x"), "--fsdp")
    assert done.returncode == 2 and "torchrun --nproc-per-node" in done.stderr and "Traceback" not in done.stderr
