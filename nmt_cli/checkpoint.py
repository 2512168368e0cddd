"""The one checkpoint format, and the only code that calls `torch.save` / `torch.load`.

A checkpoint explains itself: the resolved config, the SentencePiece model bytes and the
weights travel together, so `translate` and `eval` need the `.pt` file alone. It holds
plain containers and tensors only, so `torch.load(..., weights_only=True)` can read it
without executing code from the file. Writes go through `outputs.open_output`: a temporary
file replaces the target only once complete, so an interrupted save never destroys a good
checkpoint.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import platform
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import sentencepiece
import torch

import nmt_cli
from nmt_cli.checkpoint_checks import check_archive, check_payload
from nmt_cli.errors import CheckpointError, first_line
from nmt_cli.formats import FileFormat
from nmt_cli.outputs import open_output
from nmt_cli.special_ids import BOS, EOS, PAD, UNK

FORMAT = "nmt_cli.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT = FileFormat(
    FORMAT, FORMAT_VERSION, "checkpoint", "pass a .pt written by nmt train", CheckpointError
)

# MIGRATIONS[n] upgrades a version-n checkpoint dict to version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def tokenizer_entry(src_model: bytes, tgt_model: bytes, joint: bool) -> dict[str, Any]:
    """The `tokenizer` section: model bytes (one shared object when joint), hashes, special ids."""
    tgt_model = src_model if joint else tgt_model
    return {
        "joint": joint,
        "src_model": src_model,
        "tgt_model": tgt_model,
        "src_sha256": hashlib.sha256(src_model).hexdigest(),
        "tgt_sha256": hashlib.sha256(tgt_model).hexdigest(),
        "special_ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
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
    init_from: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; `train_state` is omitted in inference-only files, and
    `init_from` (path, step and time of the checkpoint a fine-tuning started from) in any
    other run's."""
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
    if init_from is not None:
        payload["init_from"] = init_from
    # a file object: torch opens no path itself; split_links: last.pt may be a link of a
    # step-N.pt, whose contents must stay
    with open_output(path, binary=True, split_links=True) as out:
        torch.save(payload, out)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint, migrating older format versions forward.

    Every reader comes through here, so the checks of `checkpoint_checks` (fields, tokenizer
    hashes, config, finite weights, zip CRCs) hold for every command that reads a `.pt`.
    """
    path = Path(path)
    with _open_regular_file(path) as handle:
        try:
            with warnings.catch_warnings():  # e.g. "pickle protocol 4" on a foreign file: the
                warnings.simplefilter("ignore")  # error below says all a user needs, on one line
                payload = torch.load(handle, map_location="cpu", weights_only=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot read {path} ({exc.strerror or type(exc).__name__}); check the path"
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
            raise CheckpointError(
                f"{path} is corrupt or truncated ({first_line(exc)}); use another checkpoint, "
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
        version = CHECKPOINT.check(path, payload)
        check_archive(path, handle)
    while version < FORMAT_VERSION:
        payload = MIGRATIONS[version](payload)
        version = payload["format_version"] = version + 1
    check_payload(path, payload)
    return payload


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file.

    The stat comes first so a device is never opened (opening some has side effects); the
    open is non-blocking and checked again, so a FIFO put in place after the stat cannot
    hang the command waiting for a writer.
    """
    fd = -1
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            mode = os.fstat(fd).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(
            f"checkpoint not found: {path}; pass the path of a .pt from nmt train"
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {path} ({exc.strerror or type(exc).__name__}); check the path"
        ) from None
    if not stat.S_ISREG(mode):
        if fd >= 0:
            os.close(fd)
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        raise CheckpointError(
            f"{path} is not a regular file ({kind}); pass the path of a .pt from nmt train"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
