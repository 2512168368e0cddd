"""Property-based fuzzing of what users pipe into `nmt translate` and `nmt eval`.

Hypothesis builds input files byte by byte: any unicode (control characters and NUL
included), right-to-left scripts, emoji, lone surrogates written as raw bytes (invalid
UTF-8), megabyte-long lines, CRLF line ends, files without a final newline, empty files.
Between every two fuzzed lines sits a sentinel line the reverse model translates exactly, so
a fuzzed line that split into two output lines, or merged with its neighbour, moves the
sentinels off their places.

The invariants, checked on every example (at least 500 examples each):
  1. the command exits 0, or exits non-zero with exactly one error line on stderr (an
     "error:" line, no traceback);
  2. on success the output has exactly one line per input line;
  3. every input line maps to its own output line (the sentinels stay in place), and after
     a failure a file given with --output / --save-hyp is not written at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nmt_cli.cli import app

EXAMPLES = 500
SENTINEL, SENTINEL_TRANSLATION = "1 2 3", "3 2 1"
LONE_SURROGATE = "\ud800".encode("utf-8", "surrogatepass")  # b"\xed\xa0\x80": not UTF-8
MEGABYTE = 1 << 20
PROGRESS_BAR = "translating "

RTL = "אבגדהוזחטיכלמנסעפצקרשת" + "ابتثجحخدذرزسشصضطظعغفقكلمنهوي" + "\u200f\u202b\u202e"
EMOJI = "😀🎉👍🏽🇩🇪👨‍👩‍👧‍👦❤️🔥🦄\u200d\ufe0f"
fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Lines the model can actually translate keep the success path well exercised: short enough
# for the model's 40-token limit.
any_unicode = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=24
)
control_chars = st.text(
    st.sampled_from("\x00\x01\x07\x08\t\x0b\x0c\r\x1b\x1c\x1f\x7f\x85\u2028\u2029 7"),
    max_size=12,
)
in_domain = st.lists(st.sampled_from("0123456789"), max_size=8).map(" ".join)
line_text = st.one_of(
    any_unicode, control_chars, in_domain, st.text(RTL + " 4", max_size=20),
    st.text(EMOJI + " 5", max_size=12),
)  # fmt: skip


@st.composite
def fuzzed_line(draw) -> bytes:
    """One input line's bytes (no newline): text, sometimes with a lone surrogate or a 1 MB run."""
    kind = draw(st.integers(0, 29))
    if kind == 0:  # a megabyte on one line: longer than any model's limit
        unit = draw(st.sampled_from(["7 ", "x", "ש", "😀", "\x00", " "]))
        return (unit * (MEGABYTE // len(unit.encode()))).encode()
    data = draw(line_text).encode()
    if kind == 1:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + LONE_SURROGATE + data[cut:]
    return data


@dataclass(frozen=True)
class FuzzedFile:
    """A file of fuzzed lines, each followed by a sentinel line."""

    data: bytes
    lines: int  # input lines, as `wc -l` plus one for a last line without its newline

    def sentinel_slots_hold(self, output_lines: list[str]) -> bool:
        """Each sentinel's translation sits on its own line number (input lines 2, 4, ...)."""
        return all(output_lines[i] == SENTINEL_TRANSLATION for i in range(1, len(output_lines), 2))


@st.composite
def fuzzed_file(draw) -> FuzzedFile:
    lines = draw(st.lists(fuzzed_line(), max_size=6))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in range(2 * len(lines))]
    body = [part for line in lines for part in (line, SENTINEL.encode())]
    data = b"".join(part + end for part, end in zip(body, endings, strict=True))
    if body and draw(st.booleans()):  # no final newline
        data = data.removesuffix(b"\n").removesuffix(b"\r")
    return FuzzedFile(data, len(body))


def with_line_count_changed(data: bytes, change: int) -> bytes:
    """The file's lines with one line dropped (change -1) or a line "9" added (change 1)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    lines = lines[:-1] if change < 0 else lines + [b"9"] * change
    return b"".join(line + b"\n" for line in lines)


def output_lines(text: str) -> list[str]:
    """Split on "\\n" only: that is what a line is, to `nmt` and to `wc -l`."""
    assert text == "" or text.endswith("\n"), "the last output line has no newline"
    return text.split("\n")[:-1]


def assert_success_or_one_line_error(result) -> None:
    """Invariant 1: exit 0, or one "error:" line on stderr and nothing raised past the CLI.

    `nmt eval` may have drawn its progress bar before the error; nothing else is allowed.
    """
    event("exit 0" if result.exit_code == 0 else "one-line error")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code != 0:
        *before, last = result.stderr.strip("\n").split("\n")
        assert last.startswith("error: "), result.stderr
        assert all(line.startswith(PROGRESS_BAR) for line in before), result.stderr


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings
@given(case=fuzzed_file(), to_file=st.booleans())
def test_translate_keeps_one_output_line_per_input_line(
    case: FuzzedFile, to_file: bool, checkpoint: Path, cli: CliRunner, fuzz_dir: Path
) -> None:
    source, target = fuzz_dir / "input.txt", fuzz_dir / "output.txt"
    source.write_bytes(case.data)
    target.unlink(missing_ok=True)
    args = ["translate", str(checkpoint), "--input", str(source), "--beam", "1"]
    result = cli.invoke(app, [*args, "--output", str(target)] if to_file else args)

    assert_success_or_one_line_error(result)
    if to_file:
        assert result.stdout == ""
        written = target.read_text(encoding="utf-8") if target.exists() else None
        if result.exit_code != 0:
            assert written is None, "a failed run wrote its --output file"
            return
        lines = output_lines(written)
    else:
        lines = output_lines(result.stdout)  # after a failure: the lines before the bad chunk
    if result.exit_code == 0:
        assert len(lines) == case.lines
    else:
        assert len(lines) < case.lines
    assert case.sentinel_slots_hold(lines)


@fuzz_settings
@given(case=fuzzed_file(), extra_references=st.integers(-1, 1))
def test_eval_scores_or_fails_in_one_line(
    case: FuzzedFile, extra_references: int, checkpoint: Path, cli: CliRunner, fuzz_dir: Path
) -> None:
    source, saved = fuzz_dir / "eval.src", fuzz_dir / "eval.hyp"
    reference = fuzz_dir / "eval.ref"
    source.write_bytes(case.data)
    reference.write_bytes(with_line_count_changed(case.data, extra_references))
    saved.unlink(missing_ok=True)
    result = cli.invoke(app, [
        "eval", str(checkpoint), "--src", str(source), "--ref", str(reference), "--beam", "1",
        "--save-hyp", str(saved), "--json",
    ])  # fmt: skip

    assert_success_or_one_line_error(result)
    if result.exit_code != 0:
        assert result.stdout == ""
        assert not saved.exists(), "a failed run wrote its --save-hyp file"
        return
    assert extra_references == 0 or case.lines == 0 and extra_references < 0
    scores = json.loads(result.stdout)
    assert scores["sentences"] == case.lines
    hypotheses = output_lines(saved.read_text(encoding="utf-8"))
    assert len(hypotheses) == case.lines
    assert case.sentinel_slots_hold(hypotheses)
