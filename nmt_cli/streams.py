"""Line input that works both interactively and in bulk, and output that is all-or-nothing.

`read_line_chunks` yields lines in chunks: as many as have already arrived (up to
`max_lines`), never waiting for more. On a pipe a user types into, each line is therefore
translated as soon as it arrives; on a file or a fast producer, data is always ready, so
chunks fill up and decoding batches by tokens.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nmt_cli.errors import DataError

_READ_SIZE = 1 << 16


def read_line_chunks(fd: int, max_lines: int, name: str) -> Iterator[list[str]]:
    """Decode lines from file descriptor `fd` (strict UTF-8) and yield them in chunks."""
    buffer = b""
    lines: list[str] = []
    line_number = 0
    eof = False
    while not eof or lines:
        # Read while input is ready (or while we have nothing to hand out yet).
        while not eof and len(lines) < max_lines and (not lines or _ready(fd)):
            data = os.read(fd, _READ_SIZE)
            if not data:
                eof = True
                if buffer:
                    data, buffer = buffer + b"\n", b""
                else:
                    break
            else:
                data, buffer = buffer + data, b""
            *complete, buffer = data.split(b"\n")
            for raw in complete:
                line_number += 1
                lines.append(_decode(raw, name, line_number))
        if lines:
            chunk, lines = lines[:max_lines], lines[max_lines:]
            yield chunk


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


@contextlib.contextmanager
def atomic_output(path: Path | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """Yield stdout, or a temp file that replaces `path` only if the block succeeds."""
    if path is None:
        yield stdout
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
