"""What a checkpoint must satisfy before any reader touches it.

`load_checkpoint` runs these checks for every command that reads a `.pt` (translate, eval,
average, export, train --resume), so a missing or mistyped field, a tokenizer that is not the
one its hash names, an invalid config, a non-finite weight or a flipped bit is one line naming
the checkpoint, never a traceback or a model that silently translates to garbage.
"""

from __future__ import annotations

import hashlib
import mmap
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import torch

from nmt_cli.config import config_from_dict
from nmt_cli.data.tokenizer import Tokenizer
from nmt_cli.errors import CheckpointError, ConfigError, DataError, first_line

USE_ANOTHER = "use another checkpoint, e.g. the run's best.pt or a step-N.pt"

# field -> (accepted type, what the message calls it); bool is excluded from int separately
FIELDS: dict[str, tuple[type, str]] = {
    "config": (dict, "a mapping"),
    "model_state": (dict, "a mapping of weight names to tensors"),
    "tokenizer": (dict, "a mapping"),
    "step": (int, "a non-negative integer"),
    "metrics": (dict, "a mapping"),
}
TOKENIZER_FIELDS: dict[str, tuple[type, str]] = {
    "joint": (bool, "true or false"),
    "src_model": (bytes, "bytes"),
    "tgt_model": (bytes, "bytes"),
    "src_sha256": (str, "a SHA-256 hex digest"),
    "tgt_sha256": (str, "a SHA-256 hex digest"),
    "special_ids": (dict, "a mapping"),
}
# train_state entry -> (accepted types, required); ints are counts: non-negative
_SCORE = (float, int, type(None))
TRAIN_STATE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "optimizer": ((dict,), True),
    "updater": ((dict,), False),
    "epoch": ((int,), True),
    "batch_in_epoch": ((int,), True),  # global batches; per process without the next field
    "batches_per_update": ((int,), False),
    "world_size": ((int,), False),
    "data": ((dict,), False),
    "torch_rng": ((torch.Tensor,), True),
    "best_score": (_SCORE, False),
    "best_bleu": (_SCORE, True),
    "best_step": ((int, type(None)), True),
    "bad_validations": ((int,), True),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCAL_HEADER = b"PK\x03\x04"


def check_payload(path: Path, payload: dict[str, Any]) -> None:
    """Fields and types, tokenizer hashes and bytes, config values, finite weights."""
    _check_fields(path, payload, FIELDS, "")
    if payload["step"] < 0:
        raise CheckpointError(f"{path}: field step is negative; {USE_ANOTHER}")
    if "train_state" in payload and not isinstance(payload["train_state"], dict):
        raise CheckpointError(f"{path}: field train_state must be a mapping; {USE_ANOTHER}")
    tokenizer = payload["tokenizer"]
    _check_fields(path, tokenizer, TOKENIZER_FIELDS, "tokenizer.")
    for side, label in (("src", "source"), ("tgt", "target")):
        _check_tokenizer(path, tokenizer[f"{side}_model"], tokenizer[f"{side}_sha256"], label)
    if tokenizer["joint"] and tokenizer["src_sha256"] != tokenizer["tgt_sha256"]:
        raise CheckpointError(
            f"{path}: its tokenizer is marked joint but holds two different models; {USE_ANOTHER}"
        )
    try:
        config_from_dict(payload["config"])
    except (ConfigError, TypeError, ValueError) as exc:  # the file's containers, not a recipe
        raise CheckpointError(f"{path}: its config is invalid ({first_line(exc)})") from None
    _check_weights(path, payload["model_state"])


def _check_fields(
    path: Path, section: dict[str, Any], fields: dict[str, tuple[type, str]], prefix: str
) -> None:
    for name, (kind, described) in fields.items():
        if name not in section:
            raise CheckpointError(f"{path} lacks the field {prefix}{name}; {USE_ANOTHER}")
        value = section[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{path}: field {prefix}{name} must be {described}, not "
                f"{type(value).__name__}; {USE_ANOTHER}"
            )


def _check_tokenizer(path: Path, model: bytes, digest: str, label: str) -> None:
    """The stored hash must name these bytes: a swapped model would pass every later
    vocabulary comparison (they compare hashes) and translate to garbage."""
    if not _SHA256.fullmatch(digest):
        raise CheckpointError(
            f"{path}: its {label} tokenizer hash is not a SHA-256 hex digest; {USE_ANOTHER}"
        )
    if hashlib.sha256(model).hexdigest() != digest:
        raise CheckpointError(
            f"{path}: its {label} tokenizer does not match the SHA-256 stored with it (the "
            f"file was altered); {USE_ANOTHER}"
        )
    try:
        Tokenizer(model, name=f"{path}: {label} tokenizer")
    except DataError:
        raise CheckpointError(
            f"{path}: its {label} tokenizer is not a SentencePiece model; {USE_ANOTHER}"
        ) from None


def _check_weights(path: Path, state: dict[Any, Any]) -> None:
    """Names are strings, values dense tensors, and floating-point weights finite: a NaN
    would otherwise surface as an index error deep inside decoding."""
    for name, tensor in state.items():
        if not (
            isinstance(name, str)
            and isinstance(tensor, torch.Tensor)
            and tensor.layout == torch.strided
        ):
            raise CheckpointError(
                f"{path}: field model_state must map weight names to tensors; {USE_ANOTHER}"
            )
        if tensor.is_floating_point() and not _finite(tensor):
            raise CheckpointError(
                f"{path}: weight {shown(name)} holds NaN or infinite values; {USE_ANOTHER}"
            )


def _finite(tensor: torch.Tensor) -> bool:
    """A NaN or infinity makes the sum non-finite, and a finite sum is one pass at memory speed
    (an elementwise test is many times slower); only a sum that overflowed needs that test."""
    return bool(tensor.sum().isfinite()) or bool(torch.isfinite(tensor).all())


def check_train_state(path: Path, state: dict[str, Any]) -> None:
    """The entries `train --resume` restores: a wrong type would otherwise fail steps later,
    deep inside the training loop."""
    for name, (kinds, required) in TRAIN_STATE_FIELDS.items():
        if name not in state:
            if required:
                raise CheckpointError(f"{path} lacks the field train_state.{name}; {USE_ANOTHER}")
            continue
        value = state[name]
        counts = kinds == (int,)  # a count or index: a plain integer in range
        if not isinstance(value, kinds) or (
            counts and (isinstance(value, bool) or not 0 <= value < 2**63)
        ):
            raise CheckpointError(
                f"{path}: field train_state.{name} has a wrong type or value; {USE_ANOTHER}"
            )


def check_weights_fit(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The weights must be the ones the checkpoint's config builds, name for name and shape for
    shape; called by every reader before `load_state_dict`, whose own error spans many lines."""
    problem = _misfit(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: weights do not match its config ({problem}); {USE_ANOTHER}")


def _misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    for name, tensor in expected.items():
        if name not in state:
            return f"weight {shown(name)} is missing"
        if state[name].shape != tensor.shape:
            shape = shown(str(list(state[name].shape)), 40)
            return f"weight {shown(name)} has shape {shape}, the model's is {list(tensor.shape)}"
    extra = next((name for name in state if name not in expected), None)
    return "" if extra is None else f"weight {shown(extra)} is not in the model"


def check_archive(path: Path, handle: IO[bytes]) -> None:
    """Verify the CRC-32 of every member of the checkpoint's zip archive.

    torch.load never checks them, so a flipped bit in a weight loads as a wrong number and the
    model quietly translates worse. The check is one CRC-32 pass over the file through a memory
    map (no copy), small next to building the model that every reader does next, and the price
    of never translating with silently damaged weights (`bench/checkpoint_load.py` measures it).
    """
    try:
        with (
            zipfile.ZipFile(handle) as archive,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
            memoryview(data) as view,
        ):
            for info in archive.infolist():
                if _member_crc(archive, view, info) != info.CRC:
                    raise CheckpointError(
                        f"{path} is corrupt (member {shown(info.filename)} fails its CRC "
                        f"check); {USE_ANOTHER}"
                    )
    except (zipfile.BadZipFile, ValueError, OSError, struct.error) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({first_line(exc)}); {USE_ANOTHER}"
        ) from None


def _member_crc(archive: zipfile.ZipFile, view: memoryview, info: zipfile.ZipInfo) -> int:
    """CRC-32 of a member's bytes: read in place for stored members (torch stores all)."""
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:  # zipfile checks the CRC while it inflates
            while member.read(1 << 24):
                pass
        return info.CRC
    start = info.header_offset
    if view[start : start + 4] != _LOCAL_HEADER:
        raise zipfile.BadZipFile(f"no local header for {shown(info.filename)}")
    name_len, extra_len = struct.unpack_from("<HH", view, start + 26)
    begin = start + 30 + name_len + extra_len
    if begin + info.compress_size > len(view):
        raise zipfile.BadZipFile("the archive ends inside a member")
    return zlib.crc32(view[begin : begin + info.compress_size])


def shown(text: str, limit: int = 80) -> str:
    """A name from a file, bounded and printable, for a one-line message."""
    cut = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cut + "..." if len(text) > limit else cut
