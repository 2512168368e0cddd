"""Errors a user can act on.

Every failure caused by input (a file, a recipe, a checkpoint) is raised as an `NMTError`
whose message is one line naming the problem and the fix. The CLI prints that line and
exits 1, so a user never sees a traceback for a mistake they can correct.
"""


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
