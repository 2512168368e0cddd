"""The NTM family end to end through the CLI on a tiny generated copy task:
preprocess -> train (the loss falls) -> translate (with --memory-plot) -> eval."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from nmt_cli.data.algorithmic import generate

SYMBOL_WORDS = {f"{value:02x}" for value in range(256)}

RECIPE = {
    "data": {
        "train": [{"task": "copy", "size": 3000, "seed": 1, "lengths": [1, 4]}],
        "valid": [{"task": "copy", "size": 20, "seed": 2, "lengths": [1, 4]}],
        "test": [{"task": "copy", "size": 20, "seed": 3, "lengths": [4, 4]}],
        "clean": {"max_words": 1000, "max_ratio": 100.0},
    },
    "tokenizer": {"model_type": "word", "vocab_size": 300, "joint": True},
    "model": {
        "type": "ntm", "emb_dim": 32, "controller_dim": 48, "memory_slots": 16,
        "memory_width": 8, "max_shift": 1,
    },
    "train": {
        "batch_tokens": 600, "lr": 0.003, "warmup_steps": 10, "decay": "constant",
        "label_smoothing": 0.0, "clip_norm": 10.0, "max_steps": 120, "valid_every": 120,
        "log_every": 20, "patience": 0, "precision": "fp32",
    },
    "decode": {"beam": 1, "max_len_a": 1.0, "max_len_b": 3},
}  # fmt: skip


def test_ntm_preprocess_train_translate_eval(
    run_nmt: Callable, recipe_file: Callable, tmp_path: Path
) -> None:
    recipe, data, run = recipe_file(RECIPE), tmp_path / "data", tmp_path / "run"
    done = run_nmt(["preprocess", str(recipe), "--out", str(data), "--json"])
    assert done.returncode == 0, done.stderr

    done = run_nmt(["train", str(recipe), "--data", str(data), "--out", str(run), "--json",
                    "--device", "cpu"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 120
    losses = [
        row["loss"]
        for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in row
    ]
    assert losses[-1] < losses[0] - 0.5, losses  # it learns: the symbols' loss falls

    sources = [src for src, _ in generate("copy", 3, seed=9, lengths=(2, 4))]
    plots = tmp_path / "memory"
    done = run_nmt(
        ["translate", str(run / "best.pt"), "--device", "cpu", "--memory-plot", str(plots)],
        stdin=("\n".join(sources) + "\n\n").encode(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert len(lines) == 5 and lines[3] == "" and lines[4] == ""
    assert all(set(line.split()) <= SYMBOL_WORDS for line in lines[:3])
    assert sorted(p.name for p in plots.iterdir()) == ["000001.png", "000002.png", "000003.png"]

    done = run_nmt(["translate", str(run / "best.pt"), "--coverage", "0.2"], stdin=b"3f 2a\n")
    assert done.returncode != 0 and "no" in done.stderr and "Traceback" not in done.stderr
    assert "drop --coverage" in done.stderr

    done = run_nmt(["eval", str(run / "best.pt"), "--src", str(data / "test.src"),
                    "--ref", str(data / "test.tgt"), "--json", "--device", "cpu"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 0.0 <= json.loads(done.stdout)["bleu"] <= 100.0


def test_memory_plot_needs_an_ntm_checkpoint(checkpoint: Path, run_nmt, tmp_path: Path) -> None:
    done = run_nmt(["translate", str(checkpoint), "--memory-plot", str(tmp_path / "plots")],
                   stdin=b"1 2 3\n")  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "model.type ntm" in done.stderr
    assert not (tmp_path / "plots").exists()
