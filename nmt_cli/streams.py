"""Line input that works both interactively and in bulk, in linear time and bounded memory.

`read_line_chunks` yields lines in chunks: as many as have already arrived (up to
`max_lines`), never waiting for more. On a pipe a user types into, each line is therefore
translated as soon as it arrives; on a file or a fast producer, data is always ready, so
chunks fill up and decoding batches by tokens. A line may hold at most `MAX_LINE_BYTES` of
UTF-8: an endless or newline-free input (`/dev/zero`) is an error after that much, not a
process that reads until memory runs out.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

from nmt_cli.errors import DataError

_READ_SIZE = 1 << 16
MAX_LINE_BYTES = 1 << 20  # far beyond any sentence; stated in `nmt translate --help`


def read_line_chunks(fd: int, max_lines: int, name: str) -> Iterator[list[str]]:
    """Decode lines from file descriptor `fd` (strict UTF-8) and yield them in chunks."""
    pieces: list[bytes] = []  # the unfinished line, joined once it ends: linear in its length
    pending = 0  # bytes in `pieces`
    lines: list[str] = []
    line_number = 0
    eof = False
    while not eof or lines:
        # Read while input is ready (or while we have nothing to hand out yet).
        while not eof and len(lines) < max_lines and (not lines or _ready(fd)):
            data = os.read(fd, _READ_SIZE)
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
                lines.append(_decode(raw, name, line_number))
            if rest:
                pieces.append(rest)
                pending += len(rest)
                _check_length(pending, name, line_number + 1)
        if lines:
            chunk, lines = lines[:max_lines], lines[max_lines:]
            yield chunk


def _check_length(size: int, name: str, line_number: int) -> None:
    if size > MAX_LINE_BYTES:
        raise DataError(
            f"{name}: line {line_number} is longer than {MAX_LINE_BYTES >> 20} MiB (the limit "
            "of one line); put one sentence per line"
        )


def _ready(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _decode(raw: bytes, name: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        raise DataError(
            f"{name}: line {line_number} is not valid UTF-8; re-encode it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
