"""Word alignments from attention, unknown-word replacement and attention plots.

The trained reverse-task model ("3 1 4" -> "4 1 3") makes alignments checkable: a model that
reverses must attend from output word j to source word n - 1 - j.
"""

from __future__ import annotations

from pathlib import Path

import torch
from test_decoding import reverse

from nmt_cli.inference.alignment import hard_alignment, replace_unknowns, word_of_each_piece


def test_word_of_each_piece() -> None:
    assert word_of_each_piece(["▁The", "▁do", "g", "s", "▁bark", "."]) == [0, 1, 1, 1, 2, 2]
    assert word_of_each_piece(["ab", "▁c"]) == [0, 1]


def test_hard_alignment_groups_pieces_into_words() -> None:
    src = ["▁Der", "▁Hund", "e", "▁bellt"]  # 3 words
    out = ["▁The", "▁dog", "s", "▁bark"]
    attention = torch.tensor([
        [0.9, 0.05, 0.0, 0.05, 0.0],
        [0.0, 0.2, 0.7, 0.1, 0.0],
        [0.0, 0.6, 0.3, 0.1, 0.0],
        [0.1, 0.0, 0.0, 0.8, 0.1],
        [0.0, 0.0, 0.0, 0.0, 1.0],  # EOS row, left out
    ])  # fmt: skip
    assert hard_alignment(attention, src, out) == "0-0 1-1 2-2"


def test_replace_unknowns_copies_the_attended_source_word() -> None:
    attention = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]])
    pieces = replace_unknowns(["▁Hello", "<unk>"], attention, ["▁Hallo", "▁Zürich", "X"],
                              ["Hallo", "ZürichX"], "<unk>")  # fmt: skip
    assert pieces == ["▁Hello", "▁ZürichX"]


def test_print_alignment_of_the_reverse_model_is_the_anti_diagonal(
    checkpoint: Path, run_nmt, tmp_path: Path
) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 0 1 2"]  # distinct digits: one right alignment each
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    plots = tmp_path / "plots"
    done = run_nmt(["translate", str(checkpoint), "-i", str(src), "--print-alignment",
                    "--attention-plot", str(plots), "--device", "cpu"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows, strict=True):
        text, links = row.split("\t")
        assert text == reverse(line)
        n = len(line.split())
        assert links == " ".join(f"{i}-{n - 1 - i}" for i in range(n))
    assert sorted(p.name for p in plots.iterdir()) == ["000001.png", "000002.png", "000003.png"]


def assert_nbest_alignments_fit(stdout: str, sources: list[str], n_best: int) -> None:
    """Each n-best row's alignment links its own words: no index beyond its source or its
    hypothesis, and some line has hypotheses of different lengths (so a 1-best alignment
    repeated on every row would fail)."""
    rows = [row.split("\t") for row in stdout.splitlines()]
    assert len(rows) == n_best * len(sources)
    lengths: dict[int, set[int]] = {}
    for index, _score, text, links in rows:
        n_src, n_out = len(sources[int(index)].split()), len(text.split())
        lengths.setdefault(int(index), set()).add(n_out)
        pairs = [tuple(map(int, link.split("-"))) for link in links.split()]
        assert all(i < n_src and j < n_out for i, j in pairs), (text, links)
    assert any(len(found) > 1 for found in lengths.values())


def test_each_nbest_hypothesis_has_its_own_alignment_and_plot(
    checkpoint: Path, run_nmt, tmp_path: Path
) -> None:
    lines = ["1 2 3 4 5", "9 8 7", "4 0 1 2", "3 3 5 1 0 6"]
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    plots = tmp_path / "plots"
    nbest = ["--beam", "4", "--n-best", "4", "--print-alignment", "--attention-plot", str(plots)]
    done = run_nmt(["translate", str(checkpoint), "-i", str(src), *nbest, "--device", "cpu"])
    assert done.returncode == 0, done.stderr
    assert_nbest_alignments_fit(done.stdout, lines, 4)
    names = {f"{line:06d}-{rank}.png" for line in range(1, 5) for rank in range(1, 5)}
    assert {p.name for p in plots.iterdir()} == names
