"""The run directory is the run: the same `nmt train` command continues it after any kill,
one training holds it at a time, another recipe is refused, `--restart` starts over without
mixing old and new files, and every run directory explains itself (train.log, config.yaml,
timestamped metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import last_logged_step, wait_for
from test_train import read_metrics

from nmt_cli import checkpoint as checkpoint_module
from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import config_from_dict, load_config
from nmt_cli.errors import ConfigError
from nmt_cli.train import train

STEPS = 80


def _recipe(make_recipe, **train_values) -> dict:
    """A small, fast model; one thread, so a subprocess and this process compute alike."""
    return make_recipe(
        model={"emb_dim": 32, "hidden_dim": 32, "dropout": 0.1},
        train={"max_steps": STEPS, "valid_every": 10, "log_every": 1, "keep_last": 2,
               "threads": 1, "batch_tokens": 300, **train_values},
    )  # fmt: skip


def _train_command(recipe: Path, data: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "nmt_cli", "train", str(recipe), "--data", str(data),
            "--out", str(run), "--device", "cpu"]  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


@pytest.fixture(scope="module")
def uninterrupted(make_recipe, reverse_data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("whole") / "run"
    train(config_from_dict(_recipe(make_recipe)), reverse_data, run, device="cpu",
          show_progress=False)  # fmt: skip
    return run


def test_the_same_command_survives_kill_9_sigterm_and_sigusr1(
    uninterrupted: Path, make_recipe, recipe_file, reverse_data: Path, tmp_path: Path
) -> None:
    """What a scheduler does: the same command, killed three ways and started again, ends
    with the weights of a run that was never stopped."""
    run = tmp_path / "run"
    command = _train_command(recipe_file(_recipe(make_recipe)), reverse_data, run)
    for sig, after in ((signal.SIGKILL, 14), (signal.SIGTERM, 3), (signal.SIGUSR1, 3)):
        start = last_logged_step(run)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: last_logged_step(run) >= start + after, [proc])  # noqa: B023
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:  # stopped at an update boundary, with last.pt: the documented exit code 75
            assert proc.returncode == 75, stderr.decode()[-2000:]
            assert f"stopped by {sig.name}: saved".encode() in stderr
            assert b"run the same command again" in stderr and b"Traceback" not in stderr
        assert load_checkpoint(run / "last.pt")["step"] < STEPS  # a real interruption
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"continuing the run in" in done.stderr

    assert sorted(read_metrics(run)[0]) == list(range(1, STEPS + 1))  # each step once
    assert load_checkpoint(run / "last.pt")["step"] == STEPS
    for name, tensor in _weights(uninterrupted / "last.pt").items():
        torch.testing.assert_close(_weights(run / "last.pt")[name], tensor, atol=1e-5, rtol=0)
    log = (run / "train.log").read_text()
    assert log.count("continuing the run in") == 3
    assert "stopped at step" in log and "SIGUSR1" in log


def test_a_second_run_on_the_same_directory_is_refused(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    run = tmp_path / "run"
    recipe = recipe_file(_recipe(make_recipe, max_steps=100_000))
    first = subprocess.Popen(_train_command(recipe, reverse_data, run),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(lambda: last_logged_step(run) >= 12, [first])  # past its first checkpoint
    second = run_nmt(["train", str(recipe), "--data", str(reverse_data), "--out", str(run),
                      "--device", "cpu"])  # fmt: skip
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, second.stderr
    assert errors[0].startswith(f"error: {run} is in use by another nmt train (PID {first.pid}")
    assert first.poll() is None  # the first is unharmed: it goes on, and stops cleanly
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 75, stderr.decode()[-2000:]
    step = load_checkpoint(run / "last.pt")["step"]
    assert sorted(read_metrics(run)[0]) == list(range(1, step + 1))  # one run's lines only
    assert (run / "train.log").read_text().count("starting a new run") == 1


def test_another_recipe_is_refused_and_restart_moves_the_old_run_aside(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    old = config_from_dict(_recipe(make_recipe, max_steps=20))
    train(old, reverse_data, run, device="cpu", show_progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    other = config_from_dict(_recipe(make_recipe, max_steps=10, lr=0.002))
    with pytest.raises(ConfigError, match=r"other settings \(train.lr: 0.005 -> 0.002; "
                                          r"train.max_steps: 20 -> 10\).*--restart"):  # fmt: skip
        train(other, reverse_data, run, device="cpu", show_progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # refused: untouched

    result = train(other, reverse_data, run, restart=True, device="cpu", show_progress=False)
    assert result.steps == 10
    moved = tmp_path / "run.old-1"
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before  # all of it, as it was
    names = sorted(p.name for p in run.iterdir())
    assert names == [".nmt-train.lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                     "step-10.pt", "train.log"]  # fmt: skip
    assert last_logged_step(run) == 10
    assert "starting over in" in (run / "train.log").read_text()


def test_one_serialisation_per_checkpoint_step(
    make_recipe, reverse_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """best.pt and last.pt are hard links to the step's file: one torch.save each time."""
    saves = []
    real_save = checkpoint_module.torch.save
    monkeypatch.setattr(checkpoint_module.torch, "save",
                        lambda obj, out: saves.append(1) or real_save(obj, out))  # fmt: skip
    run = tmp_path / "run"
    train(config_from_dict(_recipe(make_recipe, max_steps=30)), reverse_data, run,
          device="cpu", show_progress=False)  # fmt: skip
    assert len(saves) == 3  # validations at steps 10, 20, 30
    inode = (run / "step-30.pt").stat().st_ino
    assert (run / "last.pt").stat().st_ino == inode
    assert not (run / "step-10.pt").exists()  # keep_last 2; best.pt and last.pt unaffected
    best = load_checkpoint(run / "best.pt")["step"]
    if (run / f"step-{best}.pt").exists():
        assert (run / "best.pt").stat().st_ino == (run / f"step-{best}.pt").stat().st_ino


def test_every_run_directory_explains_itself(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    """train.log (banner, losses, validations, why it stopped), timestamped metrics, and a
    config.yaml that, used as a recipe, reproduces the run."""
    run = tmp_path / "run"
    train(config_from_dict(_recipe(make_recipe, max_steps=12)), reverse_data, run,
          device="cpu", show_progress=False)  # fmt: skip
    log = (run / "train.log").read_text().splitlines()
    text = "\n".join(log)
    for expected in ("starting a new run in", "parameters", "devices: 1 x cpu", "precision fp32",
                     "tokens per process x accum_steps 1 x 1 processes", "1,000 training pairs",
                     "step 5: loss", "step 10: valid loss", "stopped at step 12: reached "
                     "train.max_steps"):  # fmt: skip
        assert expected in text, expected
    assert all(line[:4].isdigit() and line[10] == "T" for line in log)  # each timestamped
    assert "\x1b" not in text and "━" not in text  # no progress-bar noise
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["time"][:4].isdigit() and record["epoch"] >= 1

    again = tmp_path / "again"
    train(load_config(run / "config.yaml"), reverse_data, again, device="cpu",
          show_progress=False)  # fmt: skip
    assert read_metrics(again)[0] == read_metrics(run)[0]
    assert (again / "config.yaml").read_text() == (run / "config.yaml").read_text()


def test_the_checkpoint_config_names_the_data_actually_used(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    """A recipe whose tokenizer section says something else than --data's: the checkpoint
    keeps what made the shards."""
    raw = _recipe(make_recipe, max_steps=2, valid_every=0)
    raw["tokenizer"] = {"model_type": "bpe", "vocab_size": 999}
    train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
          show_progress=False)  # fmt: skip
    stored = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    manifest = json.loads((reverse_data / "manifest.json").read_text())
    assert stored["tokenizer"] == manifest["config"]["tokenizer"]
    assert stored["data"] == manifest["config"]["data"]
    assert os.path.exists(tmp_path / "run" / "config.yaml")
