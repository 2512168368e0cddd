"""`nmt translate` as an interactive filter: each line is answered as soon as it arrives,
before the next line is written or stdin is closed (no waiting for a full buffer or EOF)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds; generous for a loaded CI machine (torch import, model load)


def test_answers_each_line_before_the_next(checkpoint: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nmt_cli.cli",
            "translate",
            str(checkpoint),
            "--device",
            "cpu",
            "--beam",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[bytes] = queue.Queue()

    def read_stdout() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")  # EOF

    threading.Thread(target=read_stdout, daemon=True).start()
    errors: list[bytes] = []
    stderr_reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    stderr_reader.start()
    try:
        for sent, expected in [("1 2 3", "3 2 1"), ("", ""), ("9 0 8 7", "7 8 0 9")]:
            proc.stdin.write(sent.encode() + b"\n")
            proc.stdin.flush()
            try:
                answer = lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no answer to {sent!r} within {TIMEOUT}s while stdin stays open")
            assert answer == expected.encode() + b"\n"
            assert proc.poll() is None  # still running, waiting for more input
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0
        assert lines.get(timeout=TIMEOUT) == b""  # nothing more after the three answers
        stderr_reader.join(timeout=TIMEOUT)
        assert b"Traceback" not in errors[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
