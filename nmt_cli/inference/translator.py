"""Translate lines of text: the driver, written once over any engine.

`Translator` normalises and encodes each line, answers empty lines with empty lines (so output
stays line-aligned with input), sorts the rest by length so that batches waste little on
padding, hands the engine its batches, and restores the input order. Search never lets a
sentence's batch-mates change its result, so the order of the input does not matter. What
differs between engines (how batches are cut, how a batch is searched) is the `Engine`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from nmt_cli.config import DecodeConfig
from nmt_cli.data.corpus import normalize
from nmt_cli.data.tokenizer import Tokenizer
from nmt_cli.errors import DataError


@dataclasses.dataclass
class Candidate:
    """One hypothesis of a translation, with what its word alignment is read from."""

    text: str  # detokenised
    score: float  # length-normalised log-probability
    out_pieces: list[str]  # output subwords (with EOS)
    # [len(out_pieces), len(src_pieces)] weights, when kept: a CPU tensor (PyTorch engine)
    # or a numpy array (CTranslate2 engine, which runs without torch)
    attention: Any = None


@dataclasses.dataclass
class Translation:
    src_pieces: list[str]  # source subwords (with the EOS the model saw)
    nbest: list[Candidate]  # best first

    @property
    def text(self) -> str:
        return self.nbest[0].text

    @property
    def out_pieces(self) -> list[str]:
        return self.nbest[0].out_pieces

    @property
    def attention(self) -> Any:
        return self.nbest[0].attention


def empty_translation() -> Translation:
    """What an empty input line translates to."""
    return Translation([], [Candidate("", 0.0, [])])


@dataclasses.dataclass
class Batch:
    """Sentences an engine searches together: positions in the call's input, with their
    normalised text, subword ids and forced target prefixes (ids, or None)."""

    indices: list[int]
    first_line: int  # the number of the call's input line 0, for error messages
    lines: list[str]
    ids: list[list[int]]
    prefixes: list[list[int]] | None
    keep_attention: bool


class Engine(Protocol):
    """What the driver needs of an engine."""

    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    decode: DecodeConfig
    max_input_tokens: int
    target_lang: str  # the target language's code ("" if unknown): sacreBLEU's tokenizer choice

    def check_options(self, *, prefixes: bool) -> None:
        """Refuse, in one line, an option this engine cannot honour."""

    def batches(
        self, order: list[int], ids: list[list[int]], first_line: int
    ) -> Iterator[list[int]]:
        """Cut length-sorted sentence indices into batches."""

    def search(self, batches: Sequence[Batch]) -> Iterator[list[Translation]]:
        """Each batch's translations, in order."""


class Translator:
    """Translates with one engine; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def translate(
        self,
        lines: list[str],
        *,
        first_line: int = 1,
        keep_attention: bool = False,
        prefixes: list[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate `lines` (numbered from `first_line` in error messages), in order.

        `prefixes[i]` (target text) forces the start of line i's translation.
        `on_progress(n)` is called after each batch with the number of sentences it held.
        """
        engine = self.engine
        engine.check_options(prefixes=prefixes is not None)
        lines = [normalize(line) for line in lines]
        ids = encode_lines(engine.src_tokenizer, lines, first_line, engine.max_input_tokens)
        forced = [engine.tgt_tokenizer.encode(normalize(p)) for p in prefixes] if prefixes else None
        results: list[Translation | None] = [None] * len(lines)
        nonempty = sorted((i for i, seq in enumerate(ids) if seq), key=lambda i: len(ids[i]))
        for i in range(len(lines)):
            if not ids[i]:
                results[i] = empty_translation()
        if on_progress is not None and len(nonempty) < len(lines):
            on_progress(len(lines) - len(nonempty))
        batches = [
            Batch(
                indices=batch,
                first_line=first_line,
                lines=[lines[i] for i in batch],
                ids=[ids[i] for i in batch],
                prefixes=[forced[i] for i in batch] if forced else None,
                keep_attention=keep_attention,
            )
            for batch in engine.batches(nonempty, ids, first_line)
        ]
        for batch, translations in zip(batches, engine.search(batches), strict=True):
            for i, translation in zip(batch.indices, translations, strict=True):
                results[i] = translation
            if on_progress is not None:
                on_progress(len(batch.indices))
        return results  # type: ignore[return-value]

    def translate_stream(
        self,
        chunks: Iterable[list[str]],
        *,
        prefixes: Iterator[str] | None = None,
        keep_attention: bool = False,
    ) -> Iterator[Translation]:
        """Translate chunk after chunk, yielding each chunk's results before reading the next.

        `prefixes` yields one target prefix per input line.
        """
        self.engine.check_options(prefixes=prefixes is not None)
        line = 1
        for chunk in chunks:
            chunk_prefixes = None
            if prefixes is not None:
                chunk_prefixes = [next(prefixes, None) for _ in chunk]
                if None in chunk_prefixes:
                    have = line - 1 + chunk_prefixes.index(None)
                    raise DataError(
                        f"the prefix file has fewer lines ({have}) than the input; "
                        "give one prefix line per input line"
                    )
            yield from self.translate(
                chunk, first_line=line, prefixes=chunk_prefixes, keep_attention=keep_attention
            )
            line += len(chunk)


def encode_lines(
    tokenizer: Tokenizer, lines: list[str], first_line: int, max_tokens: int, side: str = "input"
) -> list[list[int]]:
    """Subword ids of normalised lines; a line over the model's limit is an error naming it
    as the `side` line (an input to translate, or a target to score)."""
    ids = [tokenizer.encode(line) for line in lines]
    for offset, seq in enumerate(ids):
        if len(seq) > max_tokens:
            raise DataError(
                f"{side} line {first_line + offset} has {len(seq)} tokens, more than the "
                f"model's limit of {max_tokens}; split the line into sentences"
            )
    return ids


def cut_batches(
    order: list[int],
    ids: list[list[int]],
    batch_tokens: int,
    same_batch: Callable[[int, int], bool] = lambda first, i: True,
) -> Iterator[list[int]]:
    """Cut length-sorted sentence indices into batches of about `batch_tokens` tokens (with
    each sentence's EOS); `same_batch(first, i)` may also close a batch before sentence i."""
    batch: list[int] = []
    for i in order:
        full = (len(ids[i]) + 1) * (len(batch) + 1) > batch_tokens
        if batch and (full or not same_batch(batch[0], i)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
