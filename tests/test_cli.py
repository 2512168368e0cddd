"""End to end through the `nmt` command, once per attention variant and for the GNMT preset:
preprocess -> train -> translate (stdin -> stdout, and n-best TSV) -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.cli import app

TRAIN = {"max_steps": 30, "valid_every": 30, "log_every": 10, "keep_last": 1}

VARIANTS = {
    "dot": {"attention": "dot"},
    "general": {"attention": "general", "bidirectional": "none", "input_feeding": False},
    "concat": {"attention": "concat", "bidirectional": "bottom"},
    # The GNMT preset (bottom-bidirectional, residual from layer 3, additive attention) with
    # 3 small layers instead of 8 big ones.
    "gnmt": None,
}
GNMT_MODEL = {
    "type": "rnn",
    "preset": "gnmt",
    "enc_layers": 3,
    "dec_layers": 3,
    "emb_dim": 16,
    "hidden_dim": 32,
    "dropout": 0.1,
    "max_len": 40,
}


def invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_end_to_end(
    variant: str, make_recipe, recipe_file, run_nmt, corpus, tmp_path: Path
) -> None:
    raw = make_recipe(model=VARIANTS[variant] or {}, train=TRAIN)
    if variant == "gnmt":
        raw["model"] = GNMT_MODEL
    recipe = recipe_file(raw)
    data, run = tmp_path / "data", tmp_path / "run"

    # preprocess
    summary = json.loads(invoke("preprocess", recipe, "--out", data, "--json").stdout)
    assert summary["pairs"] == {"train": 1000, "valid": 20, "test": len(corpus.test)}
    assert (data / "manifest.json").is_file()

    # train
    summary = json.loads(
        invoke("train", recipe, "--data", data, "--out", run, "--json", "--device", "cpu").stdout
    )
    assert summary["steps"] == 30 and summary["stopped_by"] == "max_steps"
    assert summary["best_step"] == 30
    assert sorted(p.name for p in run.iterdir()) == [
        ".nmt-train.lock",
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "step-30.pt",
        "train.log",
    ]
    model = load_checkpoint(run / "best.pt")["config"]["model"]
    if variant == "gnmt":
        assert (model["attention"], model["bidirectional"], model["residual_from"]) == (
            "concat",
            "bottom",
            3,
        )
        assert (model["enc_layers"], model["dec_layers"]) == (3, 3)
    else:
        assert model["attention"] == VARIANTS[variant]["attention"]
    ckpt = run / "best.pt"

    # translate: real stdin -> stdout; one line out per line in, empty stays empty
    out = run_nmt(["translate", str(ckpt), "--device", "cpu"], stdin=b"1 2 3\n\n4 5 6 7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert len(lines) == 4 and lines[3] == ""  # three lines, each ending in a newline
    assert lines[1] == ""
    assert lines[0] and lines[2]
    assert "Traceback" not in out.stderr

    # translate --n-best: TSV of (line index, score, text), best first per line
    src = tmp_path / "in.txt"
    src.write_text("1 2 3\n\n9 8\n", encoding="utf-8")
    invoke(
        "translate",
        ckpt,
        "--input",
        src,
        "--output",
        tmp_path / "nbest.tsv",
        "--n-best",
        "3",
        "--beam",
        "4",
        "--device",
        "cpu",
    )
    rows = [r.split("\t") for r in (tmp_path / "nbest.tsv").read_text().splitlines()]
    assert all(len(r) == 3 for r in rows)
    by_line: dict[int, list[float]] = {}
    for index, score, _ in rows:
        by_line.setdefault(int(index), []).append(float(score))
    assert sorted(by_line) == [0, 1, 2]
    assert len(by_line[0]) == len(by_line[2]) == 3
    assert by_line[1] == [0.0]  # the empty line: one empty hypothesis
    for scores in by_line.values():
        assert scores == sorted(scores, reverse=True)

    # eval CKPT --src --ref, then eval --hyp --ref on the saved translations: same scores
    hyp = tmp_path / "hyp.txt"
    result = invoke(
        "eval",
        ckpt,
        "--src",
        corpus.path("test", "src"),
        "--ref",
        corpus.path("test", "tgt"),
        "--save-hyp",
        hyp,
        "--json",
        "--device",
        "cpu",
    )
    scores = json.loads(result.stdout)
    assert {"bleu", "chrf", "ter", "signature"} <= set(scores)
    assert set(scores["signature"]) == {"bleu", "chrf", "ter"}
    assert scores["signature"]["bleu"].startswith("nrefs:1")
    assert scores["sentences"] == len(corpus.test)
    assert len(hyp.read_text().splitlines()) == len(corpus.test)
    assert "BLEU" in result.stderr  # the table is for people: stderr

    again = json.loads(
        invoke("eval", "--hyp", hyp, "--ref", corpus.path("test", "tgt"), "--json").stdout
    )
    assert again == scores


def test_eval_of_a_perfect_hypothesis(corpus) -> None:
    ref = corpus.path("test", "tgt")
    scores = json.loads(invoke("eval", "--hyp", ref, "--ref", ref, "--json").stdout)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["ter"] == pytest.approx(0.0)


def test_translate_uses_a_trained_model(checkpoint: Path, corpus, tmp_path: Path) -> None:
    """The shared, converged model reverses digits through the CLI too (file in, stdout out)."""
    src = tmp_path / "in.txt"
    src.write_text("1 2 3\n5 0 7 7\n", encoding="utf-8")
    result = invoke("translate", checkpoint, "--input", src, "--device", "cpu", "--beam", "1")
    assert result.stdout == "3 2 1\n7 7 0 5\n"
