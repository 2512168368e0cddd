"""Errors a user can act on.

Every failure caused by input (a file, a recipe, a checkpoint) is raised as an `NMTError`
whose message is one line naming the problem and the fix. The CLI prints that line and
exits 1, so a user never sees a traceback for a mistake they can correct.
"""

import reprlib


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of a library's error, cut to `limit` characters, to quote inside ours
    (torch and CTranslate2 raise messages of many lines)."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


class NMTError(Exception):
    """Base class: the message is shown to the user as-is."""


class ConfigError(NMTError):
    """A recipe or `--set` override is malformed, or names an unknown key."""


class DataError(NMTError):
    """A corpus or input file is missing, unreadable, or inconsistent."""


class CheckpointError(NMTError):
    """A checkpoint is corrupt, truncated, foreign, or from a newer format version."""


class TrainingError(NMTError):
    """Training cannot go on: the loss diverged, or fp16 cannot represent the gradients."""


class DistributedError(NMTError):
    """A training process lost contact with the others: one of them died or hung."""


class RelayedError(NMTError):
    """Rank 0's error, passed to a process that has nothing to add to it."""


class OutputError(NMTError):
    """An output cannot be written: its directory is missing or read-only, or the disk is full."""


class _Short(reprlib.Repr):
    """`reprlib` limits, plus the types it would otherwise format in full first."""

    def repr_int(self, x: int, level: int) -> str:
        # str() of a huge int is quadratic, and refused past 4,300 digits
        return repr(x) if x.bit_length() <= 128 else f"<a {x.bit_length()}-bit integer>"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_short = _Short()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 60, 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = _short.maxfrozenset = 3


def show(value: object) -> str:
    """A value as an error message may show it: short whatever the value. A recipe's YAML
    aliases can make a 500-byte file hold a billion-element list, and formatting it whole
    took minutes and gigabytes."""
    return _short.repr(value)
