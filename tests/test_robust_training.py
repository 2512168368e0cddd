"""Training and preprocessing survive what goes wrong in long runs: fp16 overflow, NaN
losses, divergence, SIGHUP, a kill -9 in the middle of writing a checkpoint or shards, and a
full disk."""

from __future__ import annotations

import errno
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import read_metrics

from nmt_cli import checkpoint as checkpoint_module
from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.config import TransformerModelConfig, config_from_dict
from nmt_cli.data.batching import collate
from nmt_cli.data.shards import ShardReader, ShardWriter
from nmt_cli.distributed import Distributed
from nmt_cli.errors import DataError, OutputError, TrainingError
from nmt_cli.loss import TokenLoss
from nmt_cli.models import build_model
from nmt_cli.preprocess import preprocess
from nmt_cli.train import train
from nmt_cli.update import Updater


def _updater(model: torch.nn.Module, precision: str, max_bad_updates: int = 5) -> Updater:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
    loss = TokenLoss(model, label_smoothing=0.0, device=torch.device("cpu"), precision=precision)
    return Updater(loss, optimizer, device=torch.device("cpu"), precision=precision,
                   clip_norm=1.0, max_bad_updates=max_bad_updates,
                   dist=Distributed())  # fmt: skip


def _copy_batch(n: int = 16, length: int = 6):
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(n):
        ids = torch.randint(4, 20, (length,), generator=generator).tolist()
        pairs.append((ids, ids))
    return collate(pairs, torch.device("cpu"))


def test_fp16_overflow_steps_are_skipped_and_the_scale_recovers() -> None:
    # A Transformer: oneDNN has no fp16 LSTM on CPU (cuDNN has one on the GPUs fp16 is for).
    config = TransformerModelConfig(d_model=32, heads=2, ff_dim=64, enc_layers=1, dec_layers=1,
                                    dropout=0.0, max_len=40)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config, 20, 20, True)
    updater = _updater(model, "fp16")
    # A scale far beyond fp16's range (6.5e4): the first updates must overflow.
    updater.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    batch, tokens = _copy_batch(), 16 * 7
    before = [p.detach().clone() for p in model.parameters()]
    updater([batch], lr=3e-3, tokens=tokens)
    assert updater.report().overflow_updates == 1  # skipped: the weights did not move
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    losses = []
    for _ in range(60):
        updater([batch], lr=3e-3, tokens=tokens)
        losses.append(updater.report().loss)
    assert updater.report().overflow_updates >= 10  # halved from 2^40 to below 2^24 at least
    assert all(torch.isfinite(p).all() for p in model.parameters())
    learnt = [loss for loss in losses if loss == loss]  # NaN: every update of it overflowed
    assert learnt[-1] < 0.8 * learnt[0]  # and it learns in fp16 afterwards


def test_nan_losses_are_skipped_and_training_goes_on(
    make_recipe, reverse_data: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = {"n": 0}
    real_forward = TokenLoss.forward

    def sometimes_nan(self, *batch):
        if not self.model.training:  # validation
            return real_forward(self, *batch)
        calls["n"] += 1
        loss = real_forward(self, *batch)
        return loss * float("nan") if calls["n"] in (3, 4, 9) else loss

    monkeypatch.setattr(TokenLoss, "forward", sometimes_nan)
    raw = make_recipe(train={"max_steps": 12, "log_every": 1, "valid_every": 6})
    result = train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
                   show_progress=False)  # fmt: skip
    assert result.stopped_by == "max_steps" and result.steps == 12
    losses, _ = read_metrics(tmp_path / "run")
    # A skipped update still counts as a step: the host does not wait to learn of it.
    assert sorted(losses) == list(range(1, 13))
    assert [step for step, loss in losses.items() if loss != loss] == [3, 4, 9]
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["train_state"]["updater"]["skipped_updates"] == 3
    assert all(torch.isfinite(t).all() for t in last["model_state"].values())


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    run = tmp_path / "run"
    raw = make_recipe(train={"max_steps": 40, "valid_every": 5, "log_every": 1,
                             "max_bad_updates": 3, "clip_norm": 0.0})  # fmt: skip
    recipe = recipe_file(raw)
    args = ["train", str(recipe), "--data", str(reverse_data), "--out", str(run), "--device", "cpu"]
    assert run_nmt([*args, "--set", "train.max_steps=5"]).returncode == 0
    # An absurd learning rate sends the weights to ~1e30 and the loss to inf/NaN.
    done = run_nmt([*args, "--resume", str(run / "last.pt"), "--set", "train.lr=1e30"])
    assert done.returncode == 1
    assert "3 updates in a row" in done.stderr and "lower train.lr" in done.stderr
    assert "Traceback" not in done.stderr
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 5
    assert all(torch.isfinite(t).all() for t in last["model_state"].values())

    # One such update, then a validation: the weights are finite, what they compute is not.
    with pytest.raises(TrainingError, match="validation loss at step 6 is not finite"):
        train(config_from_dict({**raw, "train": {**raw["train"], "lr": 1e30, "valid_every": 1}}),
              reverse_data, run, resume=run / "last.pt", device="cpu",
              show_progress=False)  # fmt: skip
    assert load_checkpoint(run / "last.pt")["step"] == 5


def _wait_for_new_lines(path: Path, start_lines: int, new: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= start_lines + new:
            return
        time.sleep(0.02)
    raise AssertionError(f"training wrote no progress to {path} in {timeout} s")


def test_kill_9_while_writing_checkpoints_never_breaks_last_pt(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    """A checkpoint of a 10 MB model and two links to it are written at every step, and the
    process is killed at several moments after training got going; last.pt must load every
    time, and resuming must finish the run."""
    run = tmp_path / "run"
    raw = make_recipe(model={"emb_dim": 256, "hidden_dim": 512},
                      train={"max_steps": 400, "valid_every": 1, "log_every": 1})  # fmt: skip
    recipe = recipe_file(raw)
    base = [sys.executable, "-m", "nmt_cli", "train", str(recipe), "--data", str(reverse_data),
            "--out", str(run), "--device", "cpu"]  # fmt: skip
    metrics = run / "metrics.jsonl"
    for delay in (0.0, 0.05, 0.3):
        resume = ["--resume", str(run / "last.pt")] if (run / "last.pt").exists() else []
        lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        proc = subprocess.Popen([*base, *resume], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        _wait_for_new_lines(metrics, lines, new=4)  # two steps: two validations, two saves
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        last = load_checkpoint(run / "last.pt")
        assert "train_state" in last and last["step"] >= 1
    done = run_nmt(["train", str(recipe), "--data", str(reverse_data), "--out", str(run),
                    "--device", "cpu", "--resume", str(run / "last.pt"),
                    "--set", f"train.max_steps={last['step'] + 3}"], timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "last.pt")["step"] == last["step"] + 3
    assert not list(run.glob(".*.nmt-tmp-*"))  # the killed writes' leftovers were removed


def test_sighup_writes_last_pt_and_exits_cleanly(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path
) -> None:
    """SIGHUP (what a closed terminal sends) stops like the scheduler's signals: the current
    update finishes and last.pt is written with its training state. (SIGTERM and SIGUSR1,
    and continuing after each, are in test_run_dir.py.)"""
    run = tmp_path / "run"
    recipe = recipe_file(make_recipe(train={"max_steps": 100_000, "valid_every": 100_000,
                                            "log_every": 1}))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "train", str(recipe), "--data",
                             str(reverse_data), "--out", str(run), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for_new_lines(run / "metrics.jsonl", 0, new=3)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr.decode()  # "stopped, run me again"
    assert b"stopped by SIGHUP: saved" in stderr and b"Traceback" not in stderr
    last = load_checkpoint(run / "last.pt")
    assert "train_state" in last and last["step"] >= 3


def _last_error_on_a_small_disk(args: list[str], limit: int) -> str:
    """Run `nmt ARGS` where writing a file past `limit` bytes fails as on a full disk (EFBIG
    instead of ENOSPC; Python ignores SIGXFSZ); it must exit 1 without a traceback. Returns
    the last stderr line, after any progress lines."""

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "nmt_cli", *args], capture_output=True,
                          preexec_fn=small_disk)  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_a_full_disk_is_a_one_line_error_and_last_pt_survives(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    """Checkpoints that outgrow a file-size limit: training stops with one line naming the
    fix, and the previous checkpoint is byte-for-byte intact."""
    run = tmp_path / "run"
    recipe = recipe_file(make_recipe(train={"max_steps": 2, "valid_every": 2}))
    args = ["train", str(recipe), "--data", str(reverse_data), "--out", str(run), "--device",
            "cpu"]  # fmt: skip
    assert run_nmt(args).returncode == 0
    good = (run / "last.pt").read_bytes()
    limit = len(good) // 2  # checkpoints no longer fit; the small logs still do
    error = _last_error_on_a_small_disk(
        [*args, "--resume", str(run / "last.pt"), "--set", "train.max_steps=4"], limit
    )
    assert error.startswith(f"error: could not write {run / 'step-4.pt'}"), error
    assert error.endswith("free disk space or write to another path")
    assert (run / "last.pt").read_bytes() == good
    assert not list(run.glob(".*.nmt-tmp-*"))


def _copy_task_recipe(recipe_file, size: int) -> Path:
    """A preprocess recipe of `size` generated copy-task pairs (large sizes: large shards)."""
    return recipe_file({
        "data": {"train": [{"task": "copy", "size": size, "seed": 1, "lengths": [1, 20]}],
                 "valid": [{"task": "copy", "size": 10, "seed": 2}],
                 "clean": {"max_words": 1000, "max_ratio": 100.0}},
        "tokenizer": {"model_type": "word", "vocab_size": 300},
    }, name=f"copy-{size}.yaml")  # fmt: skip


def test_kill_9_during_preprocess_keeps_the_data_dir_and_is_cleaned_up(
    recipe_file, tmp_path: Path, run_nmt
) -> None:
    """SIGKILL while a re-run of `nmt preprocess` writes its shards: the earlier data dir is
    untouched and loads, and the next run removes the killed run's hidden work dir."""
    task_recipe = functools.partial(_copy_task_recipe, recipe_file)
    out = tmp_path / "data"
    assert run_nmt(["preprocess", str(task_recipe(2000)), "--out", str(out)]).returncode == 0
    manifest = (out / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "preprocess",
                             str(task_recipe(400_000)), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f".data.nmt-work-{proc.pid}-*/train.src.bin")):
        assert time.monotonic() < deadline
        time.sleep(0.05)  # until it is writing shards
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    (work,) = tmp_path.glob(f".data.nmt-work-{proc.pid}-*")  # what a killed run leaves
    assert (out / "manifest.json").read_bytes() == manifest
    assert len(ShardReader(out, "train")) == 2000
    assert run_nmt(["preprocess", str(task_recipe(3000)), "--out", str(out)]).returncode == 0
    assert not work.exists() and len(ShardReader(out, "train")) == 3000


def test_a_full_disk_during_preprocess_is_one_line_and_keeps_the_data_dir(
    recipe_file, tmp_path: Path, run_nmt
) -> None:
    """Shards that outgrow a file-size limit (EFBIG, as ENOSPC on a full disk): one line
    naming the fix, the earlier data dir untouched, no work dir left behind."""
    out = tmp_path / "data"
    assert run_nmt(["preprocess", str(_copy_task_recipe(recipe_file, 2000)), "--out",
                    str(out)]).returncode == 0  # fmt: skip
    manifest = (out / "manifest.json").read_bytes()
    limit = 1 << 20  # the 2,000-pair data fits; shards of 100,000 pairs do not
    error = _last_error_on_a_small_disk(
        ["preprocess", str(_copy_task_recipe(recipe_file, 100_000)), "--out", str(out)], limit
    )
    assert error.startswith(f"error: could not write {out}"), error
    assert "the previous data dir is intact; free disk space" in error
    assert (out / "manifest.json").read_bytes() == manifest
    assert len(ShardReader(out, "train")) == 2000
    assert not list(tmp_path.glob(".data.*"))


def test_a_data_dir_caught_mid_swap_by_a_kill_is_put_back(
    make_recipe, recipe_file, tmp_path: Path, run_nmt
) -> None:
    """A preprocess killed between its two renames leaves the earlier output as
    `.data.nmt-old-PID-TOKEN` and no `data`: the next run puts it back before anything else,
    so even when that run fails (here on a corrupt corpus) the data dir is there and loads."""
    out = tmp_path / "data"
    assert run_nmt(["preprocess", str(_copy_task_recipe(recipe_file, 2000)), "--out",
                    str(out)]).returncode == 0  # fmt: skip
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    out.rename(tmp_path / f".data.nmt-old-{dead.pid}-0123abcd")
    bad_src = tmp_path / "bad.src"
    bad_src.write_text("1 2\n3 4\n")
    (tmp_path / "bad.tgt").write_text("2 1\n")  # one line short
    raw = make_recipe()
    raw["data"]["train"] = [{"src": str(bad_src), "tgt": str(tmp_path / "bad.tgt")}]
    done = run_nmt(["preprocess", str(recipe_file(raw, name="bad.yaml")), "--out", str(out)])
    assert done.returncode == 1 and "differ in length" in done.stderr
    assert len(ShardReader(out, "train")) == 2000
    assert not list(tmp_path.glob(".data.*"))


def _no_space_left(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_while_saving_a_checkpoint_keeps_the_previous_one(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails with ENOSPC part-way (half the file on disk, then the error)."""
    saved = load_checkpoint(checkpoint)
    fields = {key: saved[key] for key in ("config", "model_state", "tokenizer", "step", "metrics")}
    target = save_checkpoint(tmp_path / "last.pt", **fields)
    good = target.read_bytes()

    def half_then_full(payload, out) -> None:
        out.write(good[: len(good) // 2])
        out.handle = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - the disk fills up
        out.write(good[len(good) // 2 :])

    monkeypatch.setattr(checkpoint_module.torch, "save", half_then_full)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        save_checkpoint(target, **fields)
    assert "the previous file is intact; free disk space" in str(caught.value)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_enospc_while_writing_shards_keeps_the_previous_data_dir(
    make_recipe, reverse_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    shutil.copytree(reverse_data, out)
    monkeypatch.setattr(ShardWriter, "_flush", _no_space_left)
    with pytest.raises(DataError, match="No space left on device") as caught:
        preprocess(config_from_dict(make_recipe()), out, show_progress=False)
    assert "the previous data dir is intact; free disk space" in str(caught.value)
    assert (out / "manifest.json").read_bytes() == (reverse_data / "manifest.json").read_bytes()
    assert len(ShardReader(out, "train")) == len(ShardReader(reverse_data, "train"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
