"""The one checkpoint format, and the only code that calls `torch.save` / `torch.load`.

A checkpoint explains itself: the resolved config, the SentencePiece model bytes and the
weights travel together, so `translate` and `eval` need the `.pt` file alone. It holds
plain containers and tensors only, so `torch.load(..., weights_only=True)` can read it
without executing code from the file. Writes go to a temporary file that replaces the
target only once complete, so an interrupted save never destroys a good checkpoint.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import platform
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sentencepiece
import torch

import nmt_cli
from nmt_cli.errors import CheckpointError

FORMAT = "nmt_cli.checkpoint"
FORMAT_VERSION = 1

# MIGRATIONS[n] upgrades a version-n checkpoint dict to version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def tokenizer_entry(src_model: bytes, tgt_model: bytes, joint: bool) -> dict[str, Any]:
    """The `tokenizer` section: model bytes (one shared object when joint), hashes, special ids."""
    return {
        "joint": joint,
        "src_model": src_model,
        "tgt_model": src_model if joint else tgt_model,
        "src_sha256": hashlib.sha256(src_model).hexdigest(),
        "tgt_sha256": hashlib.sha256(tgt_model).hexdigest(),
        "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
    }


def save_checkpoint(
    path: str | Path,
    *,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    tokenizer: dict[str, Any],
    step: int,
    metrics: dict[str, float],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; `train_state` is omitted in inference-only files."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {
            # str(): torch.__version__ is a TorchVersion, which weights_only loading rejects
            "nmt_cli": str(nmt_cli.__version__),
            "torch": str(torch.__version__),
            "sentencepiece": str(sentencepiece.__version__),
            "python": platform.python_version(),
        },
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": config,
        "model_state": model_state,
        "tokenizer": tokenizer,
        "step": step,
        "metrics": metrics,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as either
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write {path} ({_write_failure_reason(exc)}): {kept}; free disk space "
            "or write to another --out"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_failure_reason(exc: BaseException) -> str:
    """The OS's reason; torch's zip writer hides it behind an internal message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "the write failed part-way, as on a full disk"


def remove_partial_writes(directory: Path) -> None:
    """Delete temporary files left by saves that were killed (kill -9, power loss) mid-write."""
    for partial in directory.glob(".*.pt.tmp-*"):
        partial.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint, migrating older format versions forward."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}; pass the path of a .pt from nmt train"
        )
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" on a foreign file: the
            warnings.simplefilter("ignore")  # error below says all a user needs, on one line
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({_first_line(exc)}); use another checkpoint, "
            "e.g. the run's best.pt or a step-N.pt"
        ) from None
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} is not an nmt_cli checkpoint (it holds objects beyond plain data); "
                "pass a .pt written by nmt train"
            ) from None
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint at all; pass a .pt written by nmt train"
        ) from None
    except Exception:  # torch's legacy reader fails on arbitrary bytes with any error type
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint at all; pass a .pt written by nmt train"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an nmt_cli checkpoint (no '{FORMAT}' tag); "
            "pass a .pt written by nmt train"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this nmt_cli reads "
            f"({FORMAT_VERSION}); upgrade nmt_cli"
        )
    while version < FORMAT_VERSION:
        payload = MIGRATIONS[version](payload)
        version = payload["format_version"] = version + 1
    return payload


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
