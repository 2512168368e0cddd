"""Checkpoint averaging: the mean of the last few checkpoints' weights.

Vaswani et al. (2017) averaged the last 5 checkpoints of a run; the average sits nearer the
centre of the region the optimizer wanders in late in training and usually translates
better than any single checkpoint. The inputs must come from one run (same model config and
tokenizer); the output is an inference checkpoint (no training state) in the one format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.checkpoint_checks import check_weights_fit
from nmt_cli.config import config_from_dict
from nmt_cli.data.tokenizer import Tokenizer
from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.models import build_model_shapes
from nmt_cli.outputs import check_output


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the element-wise mean of the checkpoints' weights to `out`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no checkpoints to average; pass one or more .pt files")
    check_output(out, inputs=paths, option="--out")
    first = load_checkpoint(paths[0])
    _check_fits_config(paths[0], first)
    sums = {name: tensor.double() for name, tensor in first["model_state"].items()}
    latest = first
    for path in paths[1:]:
        ckpt = load_checkpoint(path)
        _check_same_run(paths[0], first, path, ckpt)
        for name, tensor in ckpt["model_state"].items():
            sums[name] += tensor.double()
        if ckpt["step"] > latest["step"]:
            latest = ckpt
    reference = first["model_state"]
    averaged = {
        name: (total / len(paths)).to(reference[name].dtype) for name, total in sums.items()
    }
    return save_checkpoint(
        out,
        config=first["config"],
        model_state=averaged,
        tokenizer=first["tokenizer"],
        step=latest["step"],
        metrics={"averaged_checkpoints": float(len(paths))},
    )


def _check_fits_config(path: Path, ckpt: dict) -> None:
    """Averaging never builds the model, so weights that its config does not build would
    otherwise become an average that no command can load."""
    cfg = config_from_dict(ckpt["config"])
    tokenizer = ckpt["tokenizer"]
    src, tgt = Tokenizer(tokenizer["src_model"]), Tokenizer(tokenizer["tgt_model"])
    model = build_model_shapes(cfg.model, src.vocab_size, tgt.vocab_size, tokenizer["joint"])
    check_weights_fit(path, model, ckpt["model_state"])


def _check_same_run(first_path: Path, first: dict, path: Path, ckpt: dict) -> None:
    if ckpt["config"].get("model") != first["config"].get("model"):
        raise CheckpointError(
            f"{path} has a different model config than {first_path}; average checkpoints of one run"
        )
    if ckpt["tokenizer"]["src_sha256"] != first["tokenizer"]["src_sha256"] or (
        ckpt["tokenizer"]["tgt_sha256"] != first["tokenizer"]["tgt_sha256"]
    ):
        raise CheckpointError(
            f"{path} has a different tokenizer than {first_path}; average checkpoints of one run"
        )
    if ckpt["model_state"].keys() != first["model_state"].keys() or any(
        ckpt["model_state"][name].shape != tensor.shape
        for name, tensor in first["model_state"].items()
    ):
        raise CheckpointError(f"{path} holds different weights than {first_path}; average one run")
