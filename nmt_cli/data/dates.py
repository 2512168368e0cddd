"""A generated corpus: human-written dates to ISO dates, the classic attention demo.

Translating "tuesday, september 27, 1994" into "1994-09-27" needs reordering (month before day
in the source, after the year in the target) and copying digits across, so a trained model's
attention map shows a readable, non-monotonic alignment within minutes on a CPU.

Every source string determines its target: "/" is used only for US month-first dates and "."
only for European day-first ones, two-digit years map 50-99 to 19xx and 00-49 to 20xx (the
range is 1950-2049), and every other format names its month in words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from os import PathLike
from pathlib import Path

FIRST_DATE = date(1950, 1, 1)
LAST_DATE = date(2049, 12, 31)
_SPAN_DAYS = (LAST_DATE - FIRST_DATE).days + 1

MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
MONTH_ABBR = tuple(m[:3] for m in MONTHS)
# AP style: short months are spelled out, September is "sept."
MONTH_AP = ("jan.", "feb.", "march", "april", "may", "june",
            "july", "aug.", "sept.", "oct.", "nov.", "dec.")  # fmt: skip
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKDAY_ABBR = tuple(w[:3] for w in WEEKDAYS)

# Words that title case capitalises; ordinal suffixes and "of"/"the" stay lower case.
_NAMES = frozenset(MONTHS + MONTH_ABBR + WEEKDAYS + WEEKDAY_ABBR + ("sept",))
CASES = ("lower", "title", "upper")


def _ordinal(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return f"{day}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _yy(d: date) -> str:
    return f"{d.year % 100:02d}"


def _month(d: date) -> str:
    return MONTHS[d.month - 1]


def _mon(d: date) -> str:
    return MONTH_ABBR[d.month - 1]


def _weekday(d: date) -> str:
    return WEEKDAYS[d.weekday()]


# Each formatter renders lower case; `_apply_case` makes the case variants.
FORMATS: dict[str, Callable[[date], str]] = {
    "month_d_yyyy": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "d_month_yyyy": lambda d: f"{d.day} {_month(d)} {d.year}",
    "d_mon_yyyy": lambda d: f"{d.day} {_mon(d)} {d.year}",
    "mon_d_yyyy": lambda d: f"{_mon(d)} {d.day} {d.year}",
    "ap_style": lambda d: f"{MONTH_AP[d.month - 1]} {d.day}, {d.year}",
    "weekday_month_d_yyyy": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "wkd_d_mon_yyyy": lambda d: f"{WEEKDAY_ABBR[d.weekday()]} {d.day} {_mon(d)} {d.year}",
    "nth_of_month_yyyy": lambda d: f"{_ordinal(d.day)} of {_month(d)} {d.year}",
    "the_nth_of_month": lambda d: f"the {_ordinal(d.day)} of {_month(d)}, {d.year}",
    "month_nth_yyyy": lambda d: f"{_month(d)} {_ordinal(d.day)}, {d.year}",
    "weekday_the_nth": lambda d: f"{_weekday(d)} the {_ordinal(d.day)} of {_month(d)} {d.year}",
    "dd_mon_yyyy_dashed": lambda d: f"{d.day:02d}-{_mon(d)}-{d.year}",
    "mon_d_apostrophe_yy": lambda d: f"{_mon(d)} {d.day}, '{_yy(d)}",
    "us_m_d_yy": lambda d: f"{d.month}/{d.day}/{_yy(d)}",
    "us_mm_dd_yyyy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "eu_dd_mm_yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "eu_d_m_yyyy": lambda d: f"{d.day}.{d.month}.{d.year}",
    "compact_yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
}

_WORD = re.compile(r"[a-z]+")


def _apply_case(text: str, case: str) -> str:
    if case == "upper":
        return text.upper()
    if case == "title":
        text = _WORD.sub(lambda m: m[0].capitalize() if m[0] in _NAMES else m[0], text)
        return text[:1].upper() + text[1:]  # "the 27th ..." starts a sentence
    return text


def render_date(d: date, fmt: str, case: str = "lower") -> str:
    """Write `d` in the named format (a key of `FORMATS`) and case (one of `CASES`)."""
    return _apply_case(FORMATS[fmt](d), case)


def _random_pair(rng: random.Random) -> tuple[str, str]:
    d = FIRST_DATE + timedelta(days=rng.randrange(_SPAN_DAYS))
    fmt = rng.choice(list(FORMATS))
    case = rng.choice(CASES)
    return render_date(d, fmt, case), d.isoformat()


def generate_dates(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (human-written date, "YYYY-MM-DD") pairs, dates uniform over 1950-2049.

    Format and case are drawn uniformly per pair; the same seed always gives the same list.
    Pairs may repeat; use `split_dates` for held-out splits.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(seed)
    return [_random_pair(rng) for _ in range(n)]


def split_dates(
    n_train: int, n_valid: int, n_test: int, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Train / valid / test splits whose source strings are all distinct.

    No source string appears twice anywhere, so valid and test are truly held out. Test is
    drawn first and valid second, so the test set for a seed does not change with `n_train`.
    """
    sizes = {"test": n_test, "valid": n_valid, "train": n_train}
    if any(k < 0 for k in sizes.values()):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {}
    budget = 20 * sum(sizes.values()) + 1000  # about 2M distinct strings exist; never loop forever
    for name, size in sizes.items():
        pairs: list[tuple[str, str]] = []
        while len(pairs) < size:
            if budget == 0:
                raise ValueError(
                    f"could not draw {sum(sizes.values())} distinct dates; ask for fewer"
                )
            budget -= 1
            src, tgt = _random_pair(rng)
            if src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        splits[name] = pairs
    return {"train": splits["train"], "valid": splits["valid"], "test": splits["test"]}


def write_pairs(
    pairs: Iterable[tuple[str, str]], src_path: str | PathLike[str], tgt_path: str | PathLike[str]
) -> None:
    """Write sources and targets as two line-aligned UTF-8 text files, one sentence per line."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    for p in (src_path, tgt_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with (
        src_path.open("w", encoding="utf-8", newline="\n") as src_file,
        tgt_path.open("w", encoding="utf-8", newline="\n") as tgt_file,
    ):
        for src, tgt in pairs:
            if "\n" in src or "\n" in tgt:
                raise ValueError(f"a sentence contains a newline: {src!r} / {tgt!r}")
            src_file.write(src + "\n")
            tgt_file.write(tgt + "\n")
