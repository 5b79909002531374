"""Crash safety and bad input: resume after SIGKILL, a crash during a
checkpoint write, a non-finite loss, and one clear sentence per bad input."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pmc_min
from pmc_min import resume as resume_mod
from pmc_min.tiny_data import make_dataset
from helpers import ROOT, assert_clean_error, comparable, run_py, write_hf_phi

sys.path.insert(0, str(ROOT))
import run  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    write_hf_phi(root / "phi", seed=2)
    make_dataset(root / "data")
    return root


def args(root, out, epochs=3, limit=15):
    return ["--model", str(root / "phi"), "--data-dir", str(root / "data"), "--finetune-epochs", "0",
            "--epochs", str(epochs), "--batch-size", "5", "--grad-accum", "1", "--n", "2", "--max-length", "64",
            "--limit", str(limit), "--lr", "1e-3", "--no-progress", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    out = setup / "uninterrupted"
    assert run.main(args(setup, out)) == 0
    return comparable(out)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(setup, uninterrupted):
    out = setup / "killed"
    # the CPU protocol's forget01 (10 questions) in batches of 5, 2 optimizer steps an epoch: killed just
    # before the first step of epoch 2, with epoch 1's checkpoint written
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "killed_run.py"), "3", *args(setup, out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001"
    assert not (out / "results.json").exists()
    resumed = run_py("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1 of 3" in resumed.stdout
    assert comparable(out) == uninterrupted


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(setup, uninterrupted, monkeypatch):
    out = setup / "crashed"
    real_save = resume_mod.save

    def crashing_save(model, tokenizer, path):
        if ".tmp-epoch-0002" in str(path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"half a file")
            raise OSError("No space left on device")
        return real_save(model, tokenizer, path)

    monkeypatch.setattr(resume_mod, "save", crashing_save)
    with pytest.raises(OSError):
        run.main(args(setup, out))
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001"
    assert resume_mod.latest_state(out).name == "epoch-0001"
    monkeypatch.setattr(resume_mod, "save", real_save)
    assert run.main(["--resume", str(out)]) == 0
    assert comparable(out) == uninterrupted


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(setup, monkeypatch):
    from pmc_min import pmc
    real_loss, calls = pmc.pmc_loss, []

    def exploding(*a, **k):
        calls.append(1)
        loss, logs = real_loss(*a, **k)
        return (loss * float("nan"), logs) if len(calls) > 3 else (loss, logs)  # epoch 2 (3 batches an epoch)

    monkeypatch.setattr(pmc, "pmc_loss", exploding)
    out = setup / "nan"
    with pytest.raises(pmc_min.UserError, match=r"The loss became nan in unlearning epoch 2; lower the learning rate; "
                                                 r"nothing non-finite was saved, and the last good checkpoint, "
                                                 r".*epoch-0001, is kept \(--resume .* retries from it\)"):
        run.main(args(setup, out))


def test_fresh_run_refuses_a_folder_with_checkpoints(setup):
    out = setup / "uninterrupted"
    with pytest.raises(pmc_min.UserError, match="holds the checkpoints of an earlier run; continue it with --resume"):
        run.main(args(setup, out))


# One test per bad input: exit code 2, one sentence, no traceback.

def test_unknown_model_name_lists_the_known_ones(tmp_path):
    assert_clean_error(run_py("--model", "phi-9", "--data-dir", str(tmp_path)),
                       r"Unknown model 'phi-9'.*known name \(tiny, phi-1_5, phi-1.5, llama-3.2-3b-instruct, smollm2-135m, gemma-3-270m\)")


def test_missing_data_file(setup, tmp_path):
    assert_clean_error(run_py(*args(setup, tmp_path / "o")[:2], "--data-dir", str(tmp_path)),
                       r"forget01.json not found")


def test_malformed_json_line(setup, tmp_path):
    data = tmp_path / "data"
    make_dataset(data)
    lines = (data / "retain99.json").read_text().splitlines()
    lines[6] = lines[6][:-3]
    (data / "retain99.json").write_text("\n".join(lines) + "\n")
    assert_clean_error(run_py("--model", str(setup / "phi"), "--data-dir", str(data)),
                       r"retain99.json, line 7: not valid JSON")


def test_truncated_safetensors(setup, tmp_path):
    import shutil
    shutil.copytree(setup / "phi", tmp_path / "phi")
    weights = tmp_path / "phi" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_clean_error(run_py("--model", str(tmp_path / "phi"), "--data-dir", str(setup / "data"),
                              "--finetune-epochs", "0", "--max-length", "64", "--out", str(tmp_path / "o")),
                       r"model.safetensors is not a readable safetensors file")


def test_config_missing_required_fields(setup, tmp_path):
    import shutil
    shutil.copytree(setup / "phi", tmp_path / "phi")
    cfg = json.loads((tmp_path / "phi" / "config.json").read_text())
    del cfg["hidden_size"], cfg["vocab_size"]
    (tmp_path / "phi" / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(run_py("--model", str(tmp_path / "phi"), "--data-dir", str(setup / "data")),
                       r"config.json is missing required field\(s\): vocab_size, hidden_size")


@pytest.mark.parametrize("flag, value, pattern", [
    ("--top-p", "0", r"Bad hyperparameter: top_p must be in \(0, 1\], not 0.0\."),
    ("--top-p", "1.01", r"Bad hyperparameter: top_p must be in \(0, 1\], not 1.01\."),
    ("--n", "0", r"Bad hyperparameter: n \(samples per question\) must be from 1 to 1000, not 0\."),
    ("--n", "1000000", r"Bad hyperparameter: n \(samples per question\) must be from 1 to 1000, not 1000000\."),
    ("--lambda", "-0.5", r"Bad hyperparameter: lambda must not be negative, not -0.5\."),
    ("--temperature", "0", r"Bad hyperparameter: temperature must be a positive number, not 0.0\."),
    ("--temperature", "nan", r"Bad hyperparameter: temperature must be a positive number, not nan\."),
    ("--top-k", "-3", r"Bad hyperparameter: top_k must not be negative \(0 or None: no top-k\), not -3\."),
    ("--eval-temperature", "0", r"Bad --eval-temperature: temperature must be a positive number, not 0.0\."),
    ("--device", "tpu", r"--device tpu is not a device torch knows; use cpu or cuda\."),
])
def test_hyperparameters_out_of_range(setup, flag, value, pattern):
    assert_clean_error(run_py("--model", str(setup / "phi"), "--data-dir", str(setup / "data"), flag, value),
                       pattern)


def test_resume_of_a_folder_without_a_run(tmp_path):
    assert_clean_error(run_py("--resume", str(tmp_path)), r"holds no run.json; --resume takes the --out folder")


def test_out_that_cannot_be_created_fails_before_any_work(setup, tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    out = run_py(*args(setup, tmp_path / "file" / "run")[:-1] + [str(tmp_path / "file" / "run")])
    assert_clean_error(out, r"--out .*file/run cannot be created \(Not a directory\)\.")
