"""`Translator`: order restored after length sorting, batching never changes a result, empty
lines stay empty, and alignments have the shape the heatmaps expect."""

from __future__ import annotations

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
