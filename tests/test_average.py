"""`nmt average`: the element-wise mean of one run's checkpoints, in the one format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nmt_cli.average import average_checkpoints
from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.errors import CheckpointError, ConfigError


def _step_files(trained) -> list[Path]:
    return sorted(trained.run_dir.glob("step-*.pt"))


def test_average_is_the_mean_of_the_weights(trained, tmp_path: Path) -> None:
    a, b = _step_files(trained)
    out = average_checkpoints([a, b], tmp_path / "avg.pt")
    averaged = load_checkpoint(out)
    first, second = load_checkpoint(a), load_checkpoint(b)
    for name, tensor in averaged["model_state"].items():
        expected = (first["model_state"][name] + second["model_state"][name]) / 2
        torch.testing.assert_close(tensor, expected)
    assert averaged["step"] == max(first["step"], second["step"])
    assert "train_state" not in averaged
    assert averaged["config"] == first["config"]


def test_averaged_checkpoint_translates(trained, tmp_path: Path, run_nmt) -> None:
    out = tmp_path / "avg.pt"
    done = run_nmt(["average", *map(str, _step_files(trained)), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    source, reference = trained.corpus.test[0]
    done = run_nmt(["translate", str(out), "--device", "cpu"], stdin=f"{source}\n".encode())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == reference


def test_checkpoints_of_another_model_are_refused(trained, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained.run_dir / "best.pt")
    config = {**ckpt["config"], "model": {**ckpt["config"]["model"], "hidden_dim": 32}}
    other = tmp_path / "other.pt"
    save_checkpoint(other, config=config, model_state=ckpt["model_state"],
                    tokenizer=ckpt["tokenizer"], step=1, metrics={})  # fmt: skip
    with pytest.raises(CheckpointError, match="different model config"):
        average_checkpoints([trained.run_dir / "best.pt", other], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


def test_output_may_not_overwrite_an_input(trained) -> None:
    a, b = _step_files(trained)
    with pytest.raises(ConfigError, match="is one of the inputs"):
        average_checkpoints([a, b], b)


def test_cli_reports_a_missing_checkpoint(tmp_path: Path, run_nmt) -> None:
    done = run_nmt(["average", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "avg.pt")])
    assert done.returncode == 1
    assert "checkpoint not found" in done.stderr and "Traceback" not in done.stderr
