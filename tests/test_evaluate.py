import pytest
import sacrebleu
from rich.console import Console

from nmt_cli.errors import DataError
from nmt_cli.evaluate import render_eval_table, score
from nmt_cli.streams import read_lines

HYPS = ["the cat sat on the mat .", "a quick brown fox jumps over the dog", "hello world"]
REFS = [
    "the cat is sitting on the mat .",
    "the quick brown fox jumps over the lazy dog",
    "hello world",
]


def test_identical_text_scores_perfectly():
    result = score(REFS, REFS)
    assert result.bleu == pytest.approx(100.0)
    assert result.scores["chrf"].score == pytest.approx(100.0)
    assert result.scores["ter"].score == pytest.approx(0.0)
    assert result.sentences == 3


def test_matches_sacrebleu_directly():
    result = score(HYPS, REFS)
    assert result.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert result.scores["chrf"].score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert result.scores["ter"].score == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)
    assert 0 < result.bleu < 100
    assert result.bleu_detail.startswith("BLEU = ")
    assert "tok:13a" in result.signature["bleu"] and "case:mixed" in result.signature["bleu"]
    assert set(result.signature) == {"bleu", "chrf", "ter"}


def test_to_dict_is_plain():
    d = score(HYPS, REFS).to_dict()
    assert list(d) == ["bleu", "chrf", "ter", "signature", "sentences", "bleu_detail"]
    assert isinstance(d["signature"], dict) and d["sentences"] == 3


def test_mismatched_counts_name_both():
    with pytest.raises(DataError, match=r"2 hypotheses.*3 references"):
        score(HYPS[:2], REFS)


def test_read_lines_strips_only_newline(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("  a b \nçé\r\n\nlast".encode())
    assert list(read_lines(path)) == ["  a b ", "çé", "", "last"]
    path.write_bytes(b"x\n")
    assert list(read_lines(path)) == ["x"]
    path.write_bytes(b"")
    assert list(read_lines(path)) == []


def test_read_lines_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        list(read_lines(tmp_path / "nope.txt"))


def test_read_lines_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 3 is not valid UTF-8"):
        list(read_lines(path))


def test_read_lines_stops_at_an_endless_line() -> None:
    """/dev/zero has no newline: one error after MAX_LINE_BYTES, not a process filling memory."""
    with pytest.raises(DataError, match=r"/dev/zero: line 1 is longer than 1 MiB"):
        list(read_lines("/dev/zero"))


def test_render_table_goes_to_given_console():
    console = Console(record=True, width=200)
    render_eval_table(score(HYPS, REFS), console)
    text = console.export_text()
    assert "BLEU" in text and "chrF2" in text and "TER" in text and "tok:13a" in text
