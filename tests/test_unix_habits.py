"""What a user of Unix tools expects of every file option: `-` is stdin or stdout, a gzipped
file reads as its text, and a corrupt one is one line."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt_cli.errors import DataError
from nmt_cli.streams import read_lines
from tests.test_bad_input import assert_one_line_error

SOURCES = "a b c d\ne f g\n\nh i j k l\n"


def test_gzip_and_plain_files_read_the_same(tmp_path: Path) -> None:
    plain, packed = tmp_path / "x.txt", tmp_path / "x.anything"
    plain.write_text("\ufeffeins\r\nzwei\n\ndrei", encoding="utf-8")
    packed.write_bytes(gzip.compress(plain.read_bytes()))  # known by its bytes, not its name
    assert list(read_lines(plain)) == list(read_lines(packed)) == ["eins", "zwei", "", "drei"]


def test_a_corrupt_gzip_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    text = "".join(f"line {i} {i * i:x}\n" for i in range(50_000)).encode()
    path.write_bytes(gzip.compress(text)[:20_000])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt gzip data after line \d+.*re-download"):
        list(read_lines(path))


def test_translate_reads_stdin_as_dash_and_gzip_files(checkpoint, tmp_path, run_nmt) -> None:
    plain, packed = tmp_path / "in.txt", tmp_path / "in.txt.gz"
    plain.write_text(SOURCES)
    packed.write_bytes(gzip.compress(SOURCES.encode()))
    base = ["translate", str(checkpoint), "--device", "cpu", "--beam", "2"]
    from_file = run_nmt([*base, "--input", str(plain)])
    assert from_file.returncode == 0, from_file.stderr
    assert len(from_file.stdout.splitlines()) == 4
    for extra, stdin in (
        (["--input", "-", "--output", "-"], SOURCES.encode()),
        (["-i", str(packed)], None),
    ):
        done = run_nmt([*base, *extra], stdin=stdin)
        assert (done.returncode, done.stdout) == (0, from_file.stdout), done.stderr


def test_eval_scores_stdin_and_gzip_files(tmp_path: Path, run_nmt) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt.gz"
    hyp.write_text("a cat sat on the mat\nthe dog barks\n")
    ref.write_bytes(gzip.compress(b"a cat sat on a mat\nthe dog barked\n"))
    plain_ref = tmp_path / "ref.txt"
    plain_ref.write_bytes(gzip.decompress(ref.read_bytes()))
    scores = []
    for args, stdin in (
        (["--hyp", str(hyp), "--ref", str(plain_ref)], None),
        (["--hyp", "-", "--ref", str(ref)], hyp.read_bytes()),
    ):
        done = run_nmt(["eval", *args, "--json"], stdin=stdin)
        assert done.returncode == 0, done.stderr
        scores.append(json.loads(done.stdout))
    assert scores[0] == scores[1] and scores[0]["bleu"] > 0


def test_a_missing_input_fails_before_the_model_loads(checkpoint, tmp_path, run_nmt) -> None:
    missing = tmp_path / "nope.txt"
    done = run_nmt(["translate", str(checkpoint), "--input", str(missing), "--device", "cpu"])
    assert_one_line_error(done.returncode, done.stderr, f"cannot read {missing}: not found")


def test_input_and_prefix_cannot_both_be_stdin(checkpoint, run_nmt) -> None:
    done = run_nmt(["translate", str(checkpoint), "-i", "-", "--prefix", "-"], stdin=b"a b\n")
    assert_one_line_error(done.returncode, done.stderr, "cannot both read stdin")


def test_version_and_shell_completion(run_nmt) -> None:
    import nmt_cli

    done = run_nmt(["--version"])
    assert (done.returncode, done.stdout) == (0, f"nmt_cli {nmt_cli.__version__}\n")
    env = {
        **os.environ,
        "_NMT_COMPLETE": "complete_bash",
        "COMP_WORDS": "nmt tr",
        "COMP_CWORD": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from nmt_cli.cli import main; main()"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["train", "translate"], done.stderr


def test_an_output_directory_that_cannot_be_made_is_one_line_before_work(tmp_path, run_nmt):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep\n")
    done = run_nmt(["demo", "--out", str(a_file / "demo")])
    assert_one_line_error(done.returncode, done.stderr, str(a_file / "demo"), "not a directory")
    assert a_file.read_text() == "keep\n"
