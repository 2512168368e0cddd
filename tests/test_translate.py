"""`Translator`: order restored after length sorting, batching never changes a result, empty
lines stay empty, and alignments have the shape the heatmaps expect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from nmt_cli.errors import DataError
from nmt_cli.inference.engines import load_translator
from nmt_cli.inference.translator import Translator

LINES = ["1 2 3 4 5 6 7", "", "8 9", "  ", "4 4 0 1", "3 1 4 1 5", "2 7 1"]


def reverse(line: str) -> str:
    return " ".join(reversed(line.split()))


@pytest.fixture(scope="module")
def translator(checkpoint: Path) -> Translator:
    return load_translator(checkpoint, torch.device("cpu"))


@pytest.mark.parametrize("beam", [1, 4])
def test_order_and_empty_lines(checkpoint: Path, beam: int) -> None:
    translator = load_translator(checkpoint, torch.device("cpu"), {"beam": beam})
    texts = [t.text for t in translator.translate(LINES)]
    assert texts == [reverse(line) for line in LINES]


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_size_does_not_change_results(checkpoint: Path, beam: int) -> None:
    def run(batch_tokens: int):
        overrides = {"beam": beam, "n_best": beam, "batch_tokens": batch_tokens}
        translator = load_translator(checkpoint, torch.device("cpu"), overrides)
        return translator.translate(LINES)

    one_by_one, all_at_once = run(1), run(10_000)
    for a, b in zip(one_by_one, all_at_once, strict=True):
        assert [c.text for c in a.nbest] == [c.text for c in b.nbest]
        assert [c.score for c in a.nbest] == pytest.approx([c.score for c in b.nbest], abs=1e-5)


def test_stream_numbers_lines_across_chunks(translator: Translator) -> None:
    chunks = [["1 2"], ["3 4", " ".join("5" * 41)]]
    with pytest.raises(DataError, match="input line 3 has 41 tokens"):
        list(translator.translate_stream(chunks))


@pytest.mark.parametrize("beam", [1, 3])
def test_attention_shapes(checkpoint: Path, beam: int) -> None:
    translator = load_translator(checkpoint, torch.device("cpu"), {"beam": beam})
    for t in translator.translate(["1 2 3", "9 8 7 6 5 4"], keep_attention=True):
        assert t.attention.shape == (len(t.out_pieces), len(t.src_pieces))
        assert t.out_pieces[-1] == t.src_pieces[-1] == "</s>"
        torch.testing.assert_close(t.attention.sum(1), torch.ones(len(t.out_pieces)))


# --- what `nmt translate` prints --------------------------------------------------------------


def test_json_lines_carry_text_score_tokens_and_alignment(checkpoint: Path, run_nmt) -> None:
    stdin = "".join(line + "\n" for line in LINES).encode()
    done = run_nmt(["translate", str(checkpoint), "--json", "--print-alignment"], stdin=stdin)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(LINES) + 1))
    assert [r["text"] for r in records] == [reverse(line) for line in LINES]
    first = records[0]
    assert "".join(first["tokens"]).replace("\u2581", " ").strip() == reverse(LINES[0])
    assert first["score"] < 0 and first["alignment"].startswith("0-6")
    assert records[1] == {"line": 2, "text": "", "score": 0.0, "tokens": [], "alignment": None}
    nbest = run_nmt(["translate", str(checkpoint), "--json", "--n-best", "2"], stdin=stdin)
    record = json.loads(nbest.stdout.splitlines()[0])
    assert len(record["nbest"]) == 2 and record["nbest"][0]["text"] == record["text"]
    assert "alignment" not in record


def test_a_summary_line_ends_on_stderr_unless_quiet(checkpoint: Path, run_nmt) -> None:
    done = run_nmt(["translate", str(checkpoint)], stdin=b"1 2 3\n4 5 6\n")
    assert done.stdout == "3 2 1\n6 5 4\n"
    assert re.fullmatch(
        r"translated 2 lines, \d+ target tokens in \d+\.\d s \([\d,]+ tokens/s\)\n", done.stderr
    )
    quiet = run_nmt(["translate", str(checkpoint), "--quiet"], stdin=b"1 2 3\n")
    assert quiet.stdout == "3 2 1\n" and quiet.stderr == ""


def test_min_length_and_ngram_blocking_from_the_command_line(checkpoint: Path, run_nmt) -> None:
    """The reverse model outputs 3 digits for "1 2 3": asked for at least 7 subwords, and
    never one twice, it must say more, without repeating itself."""
    done = run_nmt(
        ["translate", str(checkpoint), "--min-len", "7", "--no-repeat-ngram", "1", "--json"],
        stdin=b"1 2 3\n",
    )
    assert done.returncode == 0, done.stderr
    tokens = json.loads(done.stdout)["tokens"]
    assert len(tokens) >= 7 and len(set(tokens)) == len(tokens)
    scaled = run_nmt(["translate", str(checkpoint), "--min-len-a", "2", "--json"], stdin=b"1 2\n")
    assert len(json.loads(scaled.stdout)["tokens"]) >= 2 * 3  # |X| = 3 with EOS
