"""Allowed ranges of the numbers a recipe, a checkpoint's config or an option can set.

Each numeric config field declares its range once, next to the field (`bounded`), and one
generic check walks every section, so that a typo or a hostile file is one line naming the key
and the range, not a crash, a hang or a 100 GB allocation deep inside torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nmt_cli.errors import ConfigError, show


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts. NaN lies in no range (every comparison with it is
    false), and infinity only in one whose open end is infinite."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.lo < value if self.lo_open else self.lo <= value
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"{left}{self.lo}, {self.hi}{right}"


def bounded(default: Any, allowed: Range) -> Any:
    """A dataclass field whose value (each value, for a tuple) must lie in `allowed`."""
    return field(default=default, metadata={"range": allowed})


DIM = Range(1, 65_536)  # embedding, hidden and feed-forward widths
LAYERS = Range(1, 64)
DROPOUT = Range(0, 1, hi_open=True)
TOKENS = Range(1, 100_000)  # sentence lengths, in subwords (or words, or task symbols)
BATCH_TOKENS = Range(1, 10_000_000)
STEPS = Range(0, 1_000_000_000)  # counts of updates or validations
SEED = Range(0, 2**31 - 1)  # a seed plus a process rank still fits numpy's 32-bit seeds
NON_NEGATIVE = Range(0, math.inf, hi_open=True)  # finite


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Check every field declared with `bounded`, in `obj` and the dataclasses nested in it."""
    for f in dataclasses.fields(obj):
        value, name, allowed = getattr(obj, f.name), prefix + f.name, f.metadata.get("range")
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{name}.")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_ranges(item, f"{name}[{i}].")
                else:
                    _check_range(item, allowed, f"{name}[{i}]")
        else:
            _check_range(value, allowed, name)


def _check_range(value: Any, allowed: Range | None, name: str) -> None:
    if allowed is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{name} must be in {allowed}, got {show(value)}")
