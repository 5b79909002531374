"""Runs you can trust, tried as a hostile new user would: a run is pinned to its inputs and
settings, one long question shortens no other answer, a full disk or Ctrl-C loses nothing and
says how to go on, nothing non-finite is ever saved, one run per --out, and every damaged run
file ends in one sentence that names it."""

import errno
import fcntl
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pmc_min
from pmc_min import checkpoint, resume as resume_mod
from pmc_min.tiny_data import make_dataset
from helpers import ROOT, assert_clean_error, comparable, run_py

sys.path.insert(0, str(ROOT))
import run  # noqa: E402


def flags(root, out, epochs=3):
    """The CPU protocol's forget01, 10 questions of the synthetic data, in batches of 5: 2 optimizer
    steps an epoch."""
    return ["--model", str(root / "phi"), "--data-dir", str(root / "data"), "--finetune-epochs", "0",
            "--epochs", str(epochs), "--batch-size", "5", "--grad-accum", "1", "--n", "2", "--max-length", "64",
            "--limit", "15", "--lr", "1e-3", "--no-progress", "--device", "cpu", "--out", str(out)]


def killed(*args, at="3", cwd=ROOT):
    """run.py stopped by a signal just before optimizer step `at` (3: epoch 2's first), when epoch 1's
    checkpoint is written."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "killed_run.py"), at, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def interrupted(phi_and_data):
    """A run killed with SIGKILL in epoch 2, epoch 1's checkpoint written; tests damage copies of it."""
    out = phi_and_data / "interrupted"
    assert killed(*flags(phi_and_data, out)).returncode == -signal.SIGKILL
    return out


def copy_of(run_folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_folder, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def finished(phi_and_data):
    """An uninterrupted run: (its folder, its results without wall times)."""
    out = phi_and_data / "finished"
    assert run.main(flags(phi_and_data, out)) == 0
    return out, comparable(out)


# 1. A run is pinned to its inputs and settings.

def test_resume_from_another_folder_reads_the_runs_own_inputs(phi_and_data, finished, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for cwd, seed in ((here, 0), (elsewhere, 7)):  # the same relative names, other people's data
        make_dataset(cwd / "data", seed)
    relative = [a if a != str(phi_and_data / "data") else "data" for a in flags(phi_and_data, "run")]
    assert killed(*relative, cwd=here).returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, str(ROOT / "run.py"), "--resume", str(here / "run")], cwd=elsewhere,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run([sys.executable, str(ROOT / "run.py"), *relative[:-1], str(here / "again")],
                                   cwd=here, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    ours, theirs = comparable(here / "run"), comparable(here / "again")
    assert ours["curves"] == theirs["curves"] and ours["after"] == theirs["after"]


def test_resume_refuses_a_changed_or_vanished_input(phi_and_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phi_and_data / "data", data)
    args = [a if a != str(phi_and_data / "data") else str(data) for a in flags(phi_and_data, tmp_path / "run")]
    assert killed(*args).returncode == -signal.SIGKILL
    lines = (data / "forget01.json").read_text().splitlines()
    (data / "forget01.json").write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # another order
    assert_clean_error(run_py("--resume", str(tmp_path / "run")), r"forget01.json changed since the run")
    (data / "forget01.json").unlink()
    assert_clean_error(run_py("--resume", str(tmp_path / "run")), r"forget01.json, an input of the run .* no longer "
                                                                  r"exists")


def test_resume_refuses_other_settings(finished):
    out, _ = finished
    assert_clean_error(run_py("--resume", str(out), "--epochs", "50", "--lr", "0.5"),
                       r"--resume continues a run with the settings it started with .*leave out --epochs, --lr\.")


# 2. Every answer gets its own budget; a question too long for any answer is refused by its line.

def test_one_long_question_leaves_the_other_answers_intact(phi_and_data, tmp_path):
    """The random model rarely stops by itself, so an answer runs to its budget: with one budget
    for all, the long question would cut every other answer short."""
    short = [f"Where was author {i} born?" for i in range(4)]
    long = "Tell me, in as much detail as you can, where the author numbered nine was born?"
    files = {"short": short, "mixed": short[:2] + [long] + short[2:], "retain": ["What did author 5 write?"]}
    for name, lines in files.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    y0 = {}
    for name in ("short", "mixed"):
        out = tmp_path / name
        assert run.main(["--model", str(phi_and_data / "phi"), "--forget-questions", str(tmp_path / f"{name}.txt"),
                         "--retain", str(tmp_path / "retain.txt"), "--epochs", "1", "--batch-size", "2",
                         "--grad-accum", "1", "--n", "2", "--max-length", "80", "--no-progress", "--out",
                         str(out)]) == 0
        y0[name] = dict(zip(files[name], json.loads((out / "results.json").read_text())["before"]["y0"]["forget"]))
    assert [y0["mixed"][q] for q in short] == [y0["short"][q] for q in short]
    assert len(y0["mixed"][long]) < min(len(y0["mixed"][q]) for q in short)  # its own, shorter budget


def test_a_question_with_no_room_for_an_answer_is_refused_by_its_line(phi_and_data, tmp_path):
    (tmp_path / "forget.txt").write_text("Where was author 1 born?\n" + "Why " * 300 + "?\nWho?\n")
    (tmp_path / "retain.txt").write_text("What did author 2 write?\n")
    own = ["--model", str(phi_and_data / "phi"), "--retain", str(tmp_path / "retain.txt"), "--max-length", "100", "--out",
           str(tmp_path / "o")]
    out = run_py(*own, "--forget-questions", str(tmp_path / "forget.txt"))
    assert_clean_error(out, r"forget.txt, line 2: the question is \d+ tokens as prompted, which leaves no room for an "
                            r"answer within --max-length 100; shorten it, or raise --max-length \(the model supports 128\)")
    assert not (tmp_path / "o").exists()  # a failed start leaves no --out behind
    (tmp_path / "huge.txt").write_text("What " * 1_000_000 + "?\n")  # a 5 MB line
    assert_clean_error(run_py(*own, "--forget-questions", str(tmp_path / "huge.txt")),
                       r"huge.txt, line 1: the question is \d+ tokens")


def test_max_length_is_bounded_by_the_model(phi_and_data, tmp_path):
    assert_clean_error(run_py(*flags(phi_and_data, tmp_path / "o")[:-2], "--max-length", "1000000000", "--out",
                              str(tmp_path / "o")), r"--max-length 1000000000 is more than the model supports \(128 ")


# 3. A full disk loses nothing.

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one(phi_and_data, finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = resume_mod.save
    monkeypatch.setattr(resume_mod, "save", lambda m, t, path: (no_space() if "epoch-0002" in str(path)
                                                                else real_save(m, t, path)))
    with pytest.raises(pmc_min.UserError, match=r"No space left on device writing model.safetensors; the last "
                                                r"complete checkpoint, epoch-0001 is kept: free some space, then "
                                                r"continue with python run.py --resume "):
        run.main(flags(phi_and_data, out))
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001"
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the half-written checkpoint's space is free again
    monkeypatch.setattr(resume_mod, "save", real_save)
    assert run.main(["--resume", str(out)]) == 0
    assert comparable(out) == finished[1]


def test_a_fluent_reward_run_stopped_and_resumed_equals_one_run_through(phi_and_data, tmp_path, monkeypatch):
    """--reward fluent resumed: the budget comes from the checkpoint and the judge from the model
    the run started from, so the picks, curves and results are an uninterrupted run's."""
    through, cut = tmp_path / "through", tmp_path / "cut"
    assert run.main(flags(phi_and_data, through) + ["--reward", "fluent"]) == 0
    real_save = resume_mod.save
    monkeypatch.setattr(resume_mod, "save", lambda m, t, path: (no_space() if "epoch-0002" in str(path)
                                                                else real_save(m, t, path)))
    with pytest.raises(pmc_min.UserError, match="No space left on device"):
        run.main(flags(phi_and_data, cut) + ["--reward", "fluent"])
    monkeypatch.setattr(resume_mod, "save", real_save)
    assert run.main(["--resume", str(cut)]) == 0
    results = comparable(cut)
    assert results == comparable(through) and results["curves"]["fluency_budget"] > 0


def test_a_full_disk_at_the_model_keeps_results_json(phi_and_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", no_space)
    with pytest.raises(pmc_min.UserError, match=r"the last complete checkpoint, epoch-0001 and results.json are kept"):
        run.main(flags(phi_and_data, out, epochs=1))
    assert json.loads((out / "results.json").read_text())["after"]["unlearn_quality"] is not None
    assert not (out / "model").exists() and not (out / ".tmp-model").exists()


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_real_full_file_system_keeps_the_last_checkpoint(phi_and_data, finished, tmp_path):
    small = tmp_path / "small"
    checkpoint_size = sum(f.stat().st_size for f in (finished[0] / "checkpoints").rglob("*") if f.is_file())
    if not mount_tmpfs(small, str(int(1.6 * checkpoint_size))):  # room for one checkpoint, not two
        pytest.skip("mounting a tmpfs needs privileges this machine does not give")
    try:
        out = run_py(*flags(phi_and_data, small / "run"))
        assert_clean_error(out, r"No space left on device.* the last complete checkpoint, epoch-000\d is kept: free "
                                r"some space, then continue with python run.py --resume ")
        latest = (small / "run" / "checkpoints" / "LATEST").read_text().strip()
        assert load_file(small / "run" / "checkpoints" / latest / "model.safetensors")
        assert not list((small / "run" / "checkpoints").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(small)])


# 4. Nothing non-finite is ever saved.

@pytest.mark.parametrize("flag, value, pattern", [
    ("--lr", "inf", r"Bad hyperparameter: lr must be a finite number, not inf\."),
    ("--weight-decay", "nan", r"Bad hyperparameter: weight_decay must be a finite number, not nan\."),
    ("--lambda", "inf", r"Bad hyperparameter: lam must be a finite number, not inf\."),
    ("--epochs", "0", r"epochs, batch size, gradient accumulation and max length must be positive"),
    ("--epochs", "-1", r"epochs, batch size, gradient accumulation and max length must be positive"),
])
def test_settings_that_must_be_finite_or_positive_are_refused_first(phi_and_data, tmp_path, flag, value, pattern):
    assert_clean_error(run_py(*flags(phi_and_data, tmp_path / "o"), flag, value), pattern)
    assert not (tmp_path / "o").exists()


def test_an_empty_value_is_refused_not_read_as_the_default(phi_and_data, tmp_path):
    assert_clean_error(run_py(*flags(phi_and_data, tmp_path / "o"), "--out", ""), r"--out was given an empty value\.")


def test_an_out_that_holds_other_files_is_refused_and_left_as_it_was(phi_and_data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "mine" / ".tmp-draft").write_text("mine too")
    assert_clean_error(run_py(*flags(phi_and_data, tmp_path / "mine")), r"already holds files that are not a pmc_min run "
                                                                   r"\(\.tmp-draft, notes\.txt\); choose a new")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [".tmp-draft", "notes.txt"]


def test_a_cache_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    out = run_py("--no-progress", "--out", str(tmp_path / "o"), env={"PMC_MIN_CACHE": str(tmp_path / "a-file" / "c")})
    assert_clean_error(out, r"The cache folder .*a-file/c cannot be written \(Not a directory\); set PMC_MIN_CACHE")
    assert not (tmp_path / "o").exists()


def test_a_failed_cache_build_leaves_nothing_half_built(tmp_path):
    from pmc_min.files import build_once

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise pmc_min.UserError("the source is damaged.")

    with pytest.raises(pmc_min.UserError, match="damaged"):
        build_once(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert (build_once(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"ok")) / "w.bin").is_file()


def test_a_non_finite_update_never_reaches_a_saved_model(phi_and_data, tmp_path, monkeypatch):
    from pmc_min.engine import Engine

    real_step, steps = Engine.step, []

    def poisoned(engine):  # the 3rd update (epoch 2's first) makes a weight NaN, whatever the loss was
        real_step(engine)
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():
                next(engine.module.parameters())[0, 0] = float("nan")

    monkeypatch.setattr(Engine, "step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(pmc_min.UserError, match=r"The weights became non-finite in unlearning epoch 2; lower the "
                                                r"learning rate; nothing non-finite was saved, and the last good "
                                                r"checkpoint, .*epoch-0001, is kept"):
        run.main(flags(phi_and_data, out))
    assert not (out / "results.json").exists() and not (out / "model").exists()
    saved = load_file(out / "checkpoints" / "epoch-0001" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


# 5. One run per --out.

def test_a_second_run_on_a_locked_out_is_refused_and_a_stale_lock_does_not_block(phi_and_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running run.py holds it
        assert_clean_error(run_py(*flags(phi_and_data, out, epochs=1)), r"Another run is writing to .*run; wait for it")
    assert run_py(*flags(phi_and_data, out, epochs=1)).returncode == 0  # the lock file is still there, but nobody holds it


# 6. Ctrl-C.

@pytest.mark.parametrize("sent, code, word", [("INT", 130, "Interrupted"), ("TERM", 143, "Terminated")])
def test_ctrl_c_or_sigterm_says_how_to_resume_and_resume_finishes_the_run(phi_and_data, finished, tmp_path, sent, code,
                                                                          word):
    out = tmp_path / "run"
    stopped = killed(*flags(phi_and_data, out), at=f"3:{sent}")
    assert stopped.returncode == code
    assert stopped.stderr.strip().splitlines() == [
        f"{word}; the last complete checkpoint, epoch-0001 is kept: continue with python run.py --resume {out}"]
    assert run_py("--resume", str(out)).returncode == 0
    assert comparable(out) == finished[1]


# 7. Every damaged or missing run file ends in one sentence that names it.

@pytest.mark.parametrize("damage, pattern", [
    (lambda out, c: (c / "state.json").write_text('{"epoch": 1, "st'), r"state.json is damaged"),
    (lambda out, c: (c / "trainer.pt").write_bytes((c / "trainer.pt").read_bytes()[:100]), r"trainer.pt is damaged"),
    (lambda out, c: (c / "trainer.pt").unlink(), r"trainer.pt is missing"),
    (lambda out, c: (out / "checkpoints" / "LATEST").unlink(), r"LATEST is missing, though .* holds checkpoints"),
    (lambda out, c: (out / "checkpoints" / "LATEST").write_text("garbage\n"), r"LATEST names 'garbage', which is "
                                                                               r"not a checkpoint"),
    (lambda out, c: (out / "run.json").write_text("{"), r"run.json is not a run file this version of pmc_min wrote"),
    (lambda out, c: (out / "run.json").unlink(), r"holds no run.json"),
    (lambda out, c: (out / "before.json").unlink(), r"before.json is missing"),
    (lambda out, c: (c / "model.safetensors").write_bytes(b"half a file"), r"model.safetensors is not a readable"),
])
def test_a_damaged_run_file_under_resume_ends_in_one_sentence_naming_it(interrupted, tmp_path, damage, pattern):
    out = copy_of(interrupted, tmp_path)
    damage(out, out / "checkpoints" / "epoch-0001")
    assert_clean_error(run_py("--resume", str(out)), pattern)


def test_stale_temporary_files_of_a_killed_write_are_removed(interrupted, finished, tmp_path):
    out = copy_of(interrupted, tmp_path)
    (out / "checkpoints" / ".tmp-epoch-0002").mkdir()  # as a checkpoint write killed halfway leaves it
    (out / ".tmp-model").mkdir()
    (out / ".results.json.tmp").write_text("{")
    assert run_py("--resume", str(out)).returncode == 0
    assert not [p.name for p in [*out.glob(".tmp*"), *out.glob(".*.tmp"), *(out / "checkpoints").glob(".tmp*")]]
    assert comparable(out)["after"] == finished[1]["after"]
