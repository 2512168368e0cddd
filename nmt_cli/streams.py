"""Reading text, one way for every command: files, gzipped files and stdin, line by line.

`open_text` opens what a user names: `-` is stdin, a gzipped file is decompressed on the fly
(known by its magic bytes, whatever its name), and a missing, unreadable or directory path is
one line naming it. `read_line_chunks` yields the lines in chunks: as many as have already
arrived (up to `max_lines`), never waiting for more. On a pipe a user types into, each line is
therefore translated as soon as it arrives; on a file or a fast producer, data is always ready,
so chunks fill up and decoding batches by tokens. `read_lines` is the two together, and
`aligned_chunks` reads a second file line for line with the first.

Every line is strict UTF-8 (the error names the line), loses its line ending (LF or CRLF) and,
on the first line, a byte-order mark. A line may hold at most `MAX_LINE_BYTES`: an endless or
newline-free input (`/dev/zero`) is an error after that much, not a process that reads until
memory runs out.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import select
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nmt_cli.errors import DataError

STDIN = "-"
MAX_LINE_BYTES = 1 << 20  # far beyond any sentence; stated in `nmt translate --help`
_READ_SIZE = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


def read_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file (plain or gzipped; `-` for stdin), one at a time."""
    with open_text(path) as handle:
        for chunk in read_line_chunks(handle, 10_000, display_name(path)):
            yield from chunk


def aligned_chunks(
    first: Iterator[list[str]], second: Iterator[str], first_name: str, second_name: str
) -> Iterator[tuple[list[str], list[str]]]:
    """Chunks of `first` (from `read_line_chunks`) with as many lines of `second` each: two
    line-aligned files read together; a file that ends before the other is one line."""
    count = 0
    for chunk in first:
        lines = list(itertools.islice(second, len(chunk)))
        if len(lines) < len(chunk):
            raise DataError(
                f"{second_name} has {count + len(lines)} lines and {first_name} more; give "
                "line-aligned files, one line per pair"
            )
        count += len(chunk)
        yield chunk, lines
    if next(second, None) is not None:
        raise DataError(
            f"{second_name} has more lines than {first_name} ({count}); give line-aligned "
            "files, one line per pair"
        )


def display_name(path: str | Path) -> str:
    """How messages name an input: its path, or `stdin` for `-`."""
    return "stdin" if str(path) == STDIN else str(path)


@contextlib.contextmanager
def open_text(path: str | Path) -> Iterator[BinaryIO]:
    """A binary stream of `path`'s text: stdin for `-`, gunzipped when it starts as gzip."""
    if str(path) == STDIN:
        yield os.fdopen(stdin_fd(), "rb", closefd=False)
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        raise DataError(f"cannot read {path}: not found; check the path") from None
    except IsADirectoryError:
        raise DataError(
            f"cannot read {path}: it is a directory; pass a text file with one sentence per line"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    with handle:
        if handle.peek(len(_GZIP_MAGIC))[: len(_GZIP_MAGIC)] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=handle) as unzipped:
                yield unzipped  # type: ignore[misc]  # a GzipFile is a binary stream
        else:
            yield handle


def stdin_fd() -> int:
    """fd 0, or one line when the shell closed it (`<&-`): there is nothing to read."""
    try:
        fd = sys.stdin.fileno()  # sys.stdin is None when fd 0 was closed at start-up
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        raise DataError("stdin is closed; pipe text in or pass --input FILE") from None
    return fd


def read_line_chunks(handle: BinaryIO, max_lines: int, name: str) -> Iterator[list[str]]:
    """Decode the lines of a binary stream (strict UTF-8) and yield them in chunks."""
    pieces: list[bytes] = []  # the unfinished line, joined once it ends: linear in its length
    pending = 0  # bytes in `pieces`
    lines: list[str] = []
    line_number = 0
    eof = False
    while not eof or lines:
        # Read while input is ready (or while we have nothing to hand out yet).
        while not eof and len(lines) < max_lines and (not lines or _ready(handle)):
            data = _read(handle, name, line_number)
            if not data:
                eof = True
                if not pieces:
                    break
                data = b"\n"
            *complete, rest = data.split(b"\n")
            if complete:
                complete[0] = b"".join([*pieces, complete[0]])
                pieces, pending = [], 0
            for raw in complete:
                line_number += 1
                _check_length(len(raw), name, line_number)
                line = _decode(raw, name, line_number)
                lines.append(line.removeprefix("\ufeff") if line_number == 1 else line)
            if rest:
                pieces.append(rest)
                pending += len(rest)
                _check_length(pending, name, line_number + 1)
        if lines:
            chunk, lines = lines[:max_lines], lines[max_lines:]
            yield chunk


def _read(handle: BinaryIO, name: str, lines_read: int) -> bytes:
    """At most `_READ_SIZE` bytes, in one read of what has arrived (blocking only for the first)."""
    try:
        return handle.read1(_READ_SIZE)  # type: ignore[attr-defined]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{name}: corrupt gzip data after line {lines_read} ({exc}); re-download it"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {name}: {exc.strerror}; check the file") from None


def _check_length(size: int, name: str, line_number: int) -> None:
    if size > MAX_LINE_BYTES:
        raise DataError(
            f"{name}: line {line_number} is longer than {MAX_LINE_BYTES >> 20} MiB (the limit "
            "of one line); put one sentence per line"
        )


def _ready(handle: BinaryIO) -> bool:
    readable, _, _ = select.select([handle.fileno()], [], [], 0)
    return bool(readable)


def _decode(raw: bytes, name: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        raise DataError(
            f"{name}: line {line_number} is not valid UTF-8; re-encode it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
