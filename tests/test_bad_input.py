"""Mistakes in the input end with exit code 1 and one line on stderr that names the problem
(and the file, line or key), never a traceback, and never destroy existing good output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt_cli.checkpoint import FORMAT_VERSION
from nmt_cli.cli import app
from nmt_cli.inference.translator import Translator


def nmt(*args: str | Path):
    """Run the CLI in-process; an exception escaping the command would be a bug."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {result.exception!r}"
    )
    return result


def assert_one_line_error(returncode: int, stderr: str, *words: str) -> str:
    """The whole of stderr is one `error:` line containing every word in `words`."""
    assert returncode == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def assert_last_line_error(returncode: int, stderr: str, *words: str) -> str:
    """For commands that already drew a progress bar: the error is the one last line."""
    assert returncode == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], stderr
    for word in words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    return lines[-1]


# --- files ------------------------------------------------------------------------------------


def test_missing_input_file(checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    r = nmt("translate", checkpoint, "--input", missing, "--device", "cpu")
    assert_one_line_error(r.exit_code, r.stderr, str(missing), "cannot read")
    assert r.stdout == ""
    r = nmt("eval", "--hyp", missing, "--ref", missing)
    assert_one_line_error(r.exit_code, r.stderr, str(missing), "not found")


def test_missing_corpus_file(make_recipe, recipe_file, tmp_path: Path) -> None:
    raw = make_recipe()
    raw["data"]["test"] = [{"src": str(tmp_path / "nope.src"), "tgt": str(tmp_path / "nope.tgt")}]
    r = nmt("preprocess", recipe_file(raw), "--out", tmp_path / "data")
    assert_one_line_error(r.exit_code, r.stderr, "nope.src", "not found")
    assert not (tmp_path / "data").exists()


def test_missing_recipe(tmp_path: Path) -> None:
    r = nmt("preprocess", tmp_path / "recipe.yaml", "--out", tmp_path / "data")
    assert_one_line_error(r.exit_code, r.stderr, "recipe not found", "recipe.yaml")


def test_parallel_files_of_different_length(make_recipe, recipe_file, tmp_path: Path) -> None:
    src, tgt = tmp_path / "a.src", tmp_path / "a.tgt"
    src.write_text("1 2\n" * 10, encoding="utf-8")
    tgt.write_text("2 1\n" * 9, encoding="utf-8")
    raw = make_recipe()
    raw["data"]["train"] = [{"src": str(src), "tgt": str(tgt)}]
    r = nmt("preprocess", recipe_file(raw), "--out", tmp_path / "data")
    line = assert_last_line_error(r.exit_code, r.stderr, "differ in length", "a.src", "a.tgt")
    assert "has 10 lines" in line and "has 9" in line


def test_invalid_utf8_in_a_corpus(make_recipe, recipe_file, tmp_path: Path) -> None:
    src, tgt = tmp_path / "latin1.src", tmp_path / "latin1.tgt"
    src.write_bytes(b"1 2\n3 4\n5 \xe9 6\n7 8\n")
    tgt.write_bytes(b"2 1\n4 3\n6 5\n8 7\n")
    raw = make_recipe()
    raw["data"]["train"] = [{"src": str(src), "tgt": str(tgt)}]
    r = nmt("preprocess", recipe_file(raw), "--out", tmp_path / "data")
    assert_last_line_error(r.exit_code, r.stderr, "latin1.src", "line 3", "UTF-8")


def test_invalid_utf8_in_eval_files(tmp_path: Path) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes(b"ok\nstill ok\n\xff\xfe broken\n")
    ref.write_text("ok\nstill ok\nfine\n", encoding="utf-8")
    r = nmt("eval", "--hyp", hyp, "--ref", ref)
    assert_one_line_error(r.exit_code, r.stderr, "hyp.txt", "line 3", "UTF-8")


def test_invalid_utf8_on_translate_stdin(checkpoint: Path, run_nmt) -> None:
    out = run_nmt(
        ["translate", str(checkpoint), "--device", "cpu"], stdin=b"1 2 3\n4 5\n6 \xe9 7\n"
    )
    assert_one_line_error(out.returncode, out.stderr, "stdin", "line 3", "UTF-8")


# --- recipes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [
        ("model", "dropuot", "model.dropout"),
        ("train", "max_step", "train.max_steps"),
        ("decode", "beams", "decode.beam"),
    ],
)
def test_unknown_recipe_key(
    section, key, suggestion, make_recipe, recipe_file, reverse_data, tmp_path: Path
) -> None:
    raw = make_recipe()
    raw[section][key] = 1
    r = nmt("train", recipe_file(raw), "--data", reverse_data, "--out", tmp_path / "run")
    assert_one_line_error(r.exit_code, r.stderr, f"{section}.{key}", suggestion)
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_a_set_override(
    make_recipe, recipe_file, reverse_data, tmp_path: Path
) -> None:
    r = nmt(
        "train",
        recipe_file(make_recipe()),
        "--data",
        reverse_data,
        "--out",
        tmp_path / "run",
        "--set",
        "model.hiden_dim=8",
    )
    assert_one_line_error(r.exit_code, r.stderr, "model.hiden_dim", "model.hidden_dim")


def test_unknown_section(make_recipe, recipe_file, tmp_path: Path) -> None:
    raw = make_recipe()
    raw["modle"] = raw.pop("model")
    r = nmt("preprocess", recipe_file(raw), "--out", tmp_path / "data")
    assert_one_line_error(r.exit_code, r.stderr, "modle", "model")


def test_recipe_that_is_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {type: rnn\n  oops: [\n", encoding="utf-8")
    r = nmt("preprocess", bad, "--out", tmp_path / "data")
    assert_one_line_error(r.exit_code, r.stderr, "bad.yaml", "not valid YAML")


def test_wrong_value_type(make_recipe, recipe_file, tmp_path: Path) -> None:
    raw = make_recipe()
    raw["model"]["hidden_dim"] = "big"
    r = nmt("preprocess", recipe_file(raw), "--out", tmp_path / "data")
    assert_one_line_error(r.exit_code, r.stderr, "model.hidden_dim", "int")


# --- checkpoints ------------------------------------------------------------------------------


def broken_checkpoint(kind: str, good: Path, path: Path) -> Path:
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(data[:-300] + b"\0" * 300)  # the zip directory is gone
    elif kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "foreign":
        torch.save({"a": 1}, path)
    elif kind == "newer":
        payload = torch.load(good, weights_only=True)
        payload["format_version"] = FORMAT_VERSION + 1
        torch.save(payload, path)
    elif kind == "missing":
        pass
    return path


CHECKPOINT_ERRORS = {
    "truncated": "corrupt or truncated",
    "corrupt": "corrupt",
    "random": "corrupt",
    "foreign": "not an nmt_cli checkpoint",
    "newer": f"format version {FORMAT_VERSION + 1}, newer",
    "missing": "checkpoint not found",
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_ERRORS))
def test_bad_checkpoint(kind: str, checkpoint: Path, corpus, tmp_path: Path) -> None:
    bad = broken_checkpoint(kind, checkpoint, tmp_path / f"{kind}.pt")
    src = corpus.path("test", "src")
    r = nmt("translate", bad, "--input", src, "--device", "cpu")
    assert_one_line_error(r.exit_code, r.stderr, str(bad), CHECKPOINT_ERRORS[kind])
    assert r.stdout == ""
    r = nmt("eval", bad, "--src", src, "--ref", corpus.path("test", "tgt"), "--device", "cpu")
    assert_one_line_error(r.exit_code, r.stderr, str(bad), CHECKPOINT_ERRORS[kind])
    assert r.stdout == ""


def test_bad_checkpoint_in_a_real_process(checkpoint: Path, run_nmt, tmp_path: Path) -> None:
    """Out of process too: no warning or traceback from torch reaches the terminal."""
    foreign = tmp_path / "pickle.pt"
    import pickle

    foreign.write_bytes(pickle.dumps({"not": "a checkpoint"}, protocol=4))
    out = run_nmt(["translate", str(foreign), "--device", "cpu"], stdin=b"1 2\n")
    assert_one_line_error(out.returncode, out.stderr, str(foreign), "not a checkpoint")
    assert out.stdout == ""


# --- translate failures -------------------------------------------------------------------------


def test_line_longer_than_the_model_limit(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("1 2 3\n" + " ".join("7" * 60) + "\n", encoding="utf-8")
    r = nmt("translate", checkpoint, "--input", src, "--device", "cpu")
    assert_one_line_error(r.exit_code, r.stderr, "line 2", "60 tokens", "limit of 40")


def test_n_best_larger_than_the_beam(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("1 2 3\n", encoding="utf-8")
    r = nmt("translate", checkpoint, "--input", src, "--n-best", "4", "--beam", "2")
    assert_one_line_error(r.exit_code, r.stderr, "n-best 4 with beam 2", "--beam")


@pytest.mark.parametrize("failure", ["too_long", "invalid_utf8"])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_translate_leaves_output_alone(
    failure: str, existing: bool, checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """The error comes after earlier chunks were translated and written to the output."""
    # Input is read 64 KiB at a time and translated 1000 lines at a time: an invalid byte past
    # the first read fails only after ten chunks are written; an over-long line fails when
    # its chunk (the second) is checked.
    lines = 12_000 if failure == "invalid_utf8" else 1000
    bad = {"too_long": " ".join("7" * 60).encode() + b"\n", "invalid_utf8": b"1 \xe9 2\n"}[failure]
    src = tmp_path / "in.txt"
    src.write_bytes(b"1 2 3\n" * lines + bad)
    translated = []
    original = Translator.translate

    def counting(self, batch, **kwargs):
        results = original(self, batch, **kwargs)
        translated.append(len(results))
        return results

    monkeypatch.setattr(Translator, "translate", counting)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.txt"
    if existing:
        out.write_text("previous translations\n", encoding="utf-8")
    r = nmt(
        "translate", checkpoint, "--input", src, "--output", out, "--device", "cpu", "--beam", "1"
    )
    assert_one_line_error(r.exit_code, r.stderr, f"line {lines + 1}")
    assert sum(translated) >= 1000  # the failure really came midway
    if existing:
        assert out.read_text(encoding="utf-8") == "previous translations\n"
    assert sorted(p.name for p in out_dir.iterdir()) == (["out.txt"] if existing else [])


# --- train and preprocess -----------------------------------------------------------------------


def test_train_data_dir_without_manifest(make_recipe, recipe_file, tmp_path: Path) -> None:
    empty = tmp_path / "not-data"
    empty.mkdir()
    r = nmt("train", recipe_file(make_recipe()), "--data", empty, "--out", tmp_path / "run")
    assert_one_line_error(r.exit_code, r.stderr, "no manifest.json", str(empty), "nmt preprocess")


def test_failed_preprocess_keeps_the_existing_data_dir(
    make_recipe, recipe_file, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    r = nmt("preprocess", recipe_file(make_recipe()), "--out", data)
    assert r.exit_code == 0, r.stderr
    before = {p.name: p.read_bytes() for p in data.iterdir()}

    src, tgt = tmp_path / "bad.src", tmp_path / "bad.tgt"
    src.write_bytes(b"1 2\n" * 50 + b"3 \xff\n")
    tgt.write_bytes(b"2 1\n" * 51)
    raw = make_recipe()
    raw["data"]["train"] = [{"src": str(src), "tgt": str(tgt)}]
    r = nmt("preprocess", recipe_file(raw, "bad.yaml"), "--out", data)
    assert_last_line_error(r.exit_code, r.stderr, "bad.src", "line 51")

    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_preprocess_refuses_to_replace_a_foreign_dir(
    make_recipe, recipe_file, tmp_path: Path
) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...", encoding="utf-8")
    r = nmt("preprocess", recipe_file(make_recipe()), "--out", precious)
    assert_one_line_error(r.exit_code, r.stderr, str(precious), "refusing to replace")
    assert [p.name for p in precious.iterdir()] == ["chapter1.tex"]


def test_eval_needs_checkpoint_and_src_or_hyp(corpus) -> None:
    ref = corpus.path("test", "tgt")
    r = nmt("eval", "--ref", ref)
    assert_one_line_error(r.exit_code, r.stderr, "--hyp F --ref F")


def test_eval_line_count_mismatch(tmp_path: Path) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a\nb\n", encoding="utf-8")
    ref.write_text("a\nb\nc\n", encoding="utf-8")
    r = nmt("eval", "--hyp", hyp, "--ref", ref)
    assert_one_line_error(r.exit_code, r.stderr, "2 hypotheses", "3 references")
