"""Sentence-pair sources and the cleaning that training pairs go through.

Every reader is a generator over one line (or row) at a time, so a 4.5M-pair WMT corpus costs
the same memory as a 30k-pair one. Sources are local parallel files (plain or gzipped, or WMT
SGML test sets), a two-column TSV, a Hugging Face dataset (see `nmt_cli.data.hf`), or an NTM
algorithmic task generated from a seed (see `nmt_cli.data.algorithmic`).

Cleaning follows the Moses `clean-corpus-n` habits: empty, over-long and badly length-mismatched
pairs are dropped from training data only. Valid and test sets are normalised but never
filtered, since each line must stay aligned with its reference.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nmt_cli.config import CleanConfig, DataConfig, SourceConfig
from nmt_cli.data.algorithmic import TASKS, generate
from nmt_cli.errors import ConfigError, DataError
from nmt_cli.streams import read_lines

Pair = tuple[str, str]

_SGML_SUFFIXES = (".sgm", ".xml")
# WMT .sgm files are often not well-formed XML (bare `&`, unclosed tags), so segments are
# found line by line with a regex instead of an XML parser.
_SEG = re.compile(r"<seg\b[^>]*>(.*?)</seg\s*>", re.IGNORECASE)
_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos|#[0-9]+|#[xX][0-9a-fA-F]+);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def located(data: DataConfig) -> DataConfig:
    """`data` with its relative local paths joined to `data.root` (and the root then spent,
    so locating twice changes nothing): what the manifest records as read."""
    if not data.root:
        return data

    def locate(source: SourceConfig) -> SourceConfig:
        paths = {
            name: str(Path(data.root) / value)
            for name in ("src", "tgt", "tsv")
            if (value := getattr(source, name)) is not None
        }
        return dataclasses.replace(source, **paths)

    return dataclasses.replace(
        data,
        root="",
        **{split: tuple(map(locate, getattr(data, split))) for split in ("train", "valid", "test")},
    )


def check_source(source: SourceConfig) -> str:
    """Validate one source entry and that its local files exist; return its kind.

    Called for every split before any work, so a typo in a test-set path fails in a second
    rather than after minutes of tokenizer training.
    """
    kinds = [
        name
        for name, given in (
            ("parallel", source.src is not None or source.tgt is not None),
            ("tsv", source.tsv is not None),
            ("hf", source.hf is not None),
            ("task", source.task is not None),
        )
        if given
    ]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        raise ConfigError(
            f"a data source needs exactly one of src+tgt, tsv, hf or task (found: {found}); "
            "split it into separate list entries"
        )
    if kinds[0] == "task":
        _check_task(source)
    if kinds[0] == "parallel" and (source.src is None or source.tgt is None):
        given = "src" if source.src is not None else "tgt"
        raise ConfigError(f"a data source sets {given} only; parallel files need both src and tgt")
    for path in (source.src, source.tgt, source.tsv):
        if path is not None and not Path(path).is_file():
            what = "is a directory, not a file" if Path(path).is_dir() else "not found"
            raise DataError(
                f"{path}: {what}; check the path in the recipe, or the directory relative "
                "paths are read from (--set data.root=DIR)"
            )
    return kinds[0]


def _check_task(source: SourceConfig) -> None:
    """A generated source: a known task, a positive size and [lo, hi] ranges with lo <= hi."""
    if source.task not in TASKS:
        raise ConfigError(
            f"data source task {source.task!r} is unknown; use one of {', '.join(TASKS)}"
        )
    if source.size < 1:
        raise ConfigError(
            f"data source task {source.task}: size is {source.size}; set size to the number "
            "of pairs to generate (>= 1)"
        )
    lowest = {"lengths": 1, "repeats": 1, "items": 2}  # recall needs a query and an answer
    for name, low in lowest.items():
        lo, hi = getattr(source, name)
        if not low <= lo <= hi:
            raise ConfigError(
                f"data source task {source.task}: {name} [{lo}, {hi}] is not a range; "
                f"give [lo, hi] with {low} <= lo <= hi"
            )


def iter_pairs(source: SourceConfig, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    """Stream the raw (un-normalised) pairs of one source."""
    kind = check_source(source)
    if kind == "parallel":
        return _parallel(Path(source.src), Path(source.tgt))
    if kind == "tsv":
        return _tsv(Path(source.tsv))
    if kind == "task":
        return generate(
            source.task, source.size, source.seed, source.lengths, source.repeats, source.items
        )
    from nmt_cli.data.hf import hf_pairs  # `datasets` is slow to import; only load it when used

    return hf_pairs(source, src_lang, tgt_lang)


def _side_lines(path: Path) -> Iterator[str]:
    """The sentences of one side: a text file's lines or a WMT SGML file's segments.

    Files are decoded strictly (`nmt_cli.streams`), so a Latin-1 file fails loudly at the
    first bad line instead of becoming mojibake in the vocabulary.
    """
    if path.name.lower().removesuffix(".gz").endswith(_SGML_SUFFIXES):
        return _sgml_segments(path)
    return read_lines(path)


def _sgml_segments(path: Path) -> Iterator[str]:
    for line in read_lines(path):
        for match in _SEG.finditer(line):
            yield unescape_xml(match.group(1))


def unescape_xml(text: str) -> str:
    """Replace the five XML entities and numeric character references in one pass.

    One regex pass matters: `&amp;lt;` must become `&lt;`, not `<`.
    """
    if "&" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref[0] != "#":
            return _NAMED[ref]
        code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
        return chr(code) if 0 < code <= 0x10FFFF else match.group(0)

    return _ENTITY.sub(replace, text)


def _parallel(src_path: Path, tgt_path: Path) -> Iterator[Pair]:
    """Zip two line-aligned files, failing if their line counts differ.

    The longer file is read to its end so the error can give both counts, which tells the
    user whether a few lines were lost or the wrong file was paired.
    """
    src_lines, tgt_lines = _side_lines(src_path), _side_lines(tgt_path)
    unit = (
        "segments"
        if src_path.name.lower().removesuffix(".gz").endswith(_SGML_SUFFIXES)
        else "lines"
    )
    count = 0
    for src in src_lines:
        tgt = next(tgt_lines, None)
        if tgt is None:
            src_count = count + 1 + sum(1 for _ in src_lines)
            raise _mismatch(src_path, src_count, tgt_path, count, unit)
        count += 1
        yield src, tgt
    rest = sum(1 for _ in tgt_lines)
    if rest:
        raise _mismatch(src_path, count, tgt_path, count + rest, unit)


def _mismatch(
    src_path: Path, src_count: int, tgt_path: Path, tgt_count: int, unit: str
) -> DataError:
    return DataError(
        f"parallel files differ in length: {src_path} has {src_count} {unit} but {tgt_path} has "
        f"{tgt_count}; they must be line-aligned"
    )


def _tsv(path: Path) -> Iterator[Pair]:
    for n, line in enumerate(read_lines(path), start=1):
        tabs = line.count("\t")
        if tabs != 1:
            raise DataError(
                f"{path}: line {n} has {tabs} tabs; a TSV source needs exactly one (src<TAB>tgt)"
            )
        src, tgt = line.split("\t")
        yield src, tgt


def normalize(text: str) -> str:
    """Unicode NFC, every run of whitespace (tabs, NBSP, line separators) as one space, stripped.

    NFC makes visually identical strings byte-identical, so the vocabulary and BLEU do not
    see two spellings of one word.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass
class CleanStats:
    """Counts of training pairs read, kept and dropped per filter; `dropped_long_tokens`
    counts pairs over `max_tokens` subwords, found only when the tokenizer encodes them."""

    read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_long: int = 0
    dropped_ratio: int = 0
    dropped_long_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def clean_pairs(pairs: Iterable[Pair], clean: CleanConfig, stats: CleanStats) -> Iterator[Pair]:
    """Normalise training pairs and drop empty, over-long and length-mismatched ones.

    A pair is empty if either side is empty after normalisation; over-long if either side has
    more than `max_words` words; mismatched if longer/shorter word count exceeds `max_ratio`.
    `stats` is updated in place so the caller can report counts once the stream is consumed.
    """
    for src, tgt in pairs:
        stats.read += 1
        src, tgt = normalize(src), normalize(tgt)
        if not src or not tgt:
            stats.dropped_empty += 1
            continue
        src_words, tgt_words = src.count(" ") + 1, tgt.count(" ") + 1  # normalised: one space
        if src_words > clean.max_words or tgt_words > clean.max_words:
            stats.dropped_long += 1
            continue
        if max(src_words, tgt_words) > clean.max_ratio * min(src_words, tgt_words):
            stats.dropped_ratio += 1
            continue
        stats.kept += 1
        yield src, tgt


def normalized_pairs(pairs: Iterable[Pair]) -> Iterator[Pair]:
    """Normalise valid/test pairs without dropping any: line i must stay line i of the reference."""
    for src, tgt in pairs:
        yield normalize(src), normalize(tgt)
