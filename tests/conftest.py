"""Shared test setup: no test may reach the network; a tiny task and a model trained on it.

The task reverses short digit sequences ("3 1 4" -> "4 1 3"): a one-layer attention model
with 64 hidden units solves it exactly in a few hundred updates on one CPU core, so tests can
check real convergence, and that everything downstream of training works, within seconds.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
import typer.main
import typer.testing
import yaml

# `datasets` and `huggingface_hub` read these once at import, which can happen during test
# collection, before any fixture runs; set them here too so the first import sees them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The test models are tiny: one thread runs them fastest, and several threads contending for
# a busy CI machine's cores can make the suite ten times slower. Set before torch is imported
# (it also reaches the `nmt` subprocesses); export OMP_NUM_THREADS to choose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _offline_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """Also when torch was imported before this file (OMP_NUM_THREADS is read at import)."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True, scope="session")
def _one_click_command_per_app() -> Iterator[None]:
    """typer's CliRunner builds the click command from the annotations at every call (60 ms,
    half of a fuzzed `nmt translate`); `nmt` builds it once per process, and so do the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", functools.cache(typer.main.get_command))
        yield


# --- the reverse task ---------------------------------------------------------------------

TINY_MODEL: dict[str, Any] = {
    "type": "rnn", "emb_dim": 32, "hidden_dim": 64, "enc_layers": 1, "dec_layers": 1,
    "bidirectional": "all", "attention": "general", "input_feeding": True, "dropout": 0.0,
    "tie_embeddings": True, "max_len": 40,
}  # fmt: skip

TINY_TRAIN: dict[str, Any] = {
    "seed": 1, "batch_tokens": 400, "max_steps": 600, "lr": 0.005, "warmup_steps": 30,
    "decay": "constant", "label_smoothing": 0.0, "clip_norm": 1.0, "valid_every": 300,
    "log_every": 10, "keep_last": 2, "patience": 0,
}  # fmt: skip


def reverse_pairs(n: int, seed: int, lengths: tuple[int, int] = (3, 7)) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        digits = [rng.choice("0123456789") for _ in range(rng.randint(*lengths))]
        pairs.append((" ".join(digits), " ".join(reversed(digits))))
    return pairs


def write_parallel(pairs: list[tuple[str, str]], src: Path, tgt: Path) -> None:
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")


@dataclass(frozen=True)
class Corpus:
    """Line-aligned files `{train,valid,test}.{src,tgt}` in `root`; `test` is held out."""

    root: Path
    test: list[tuple[str, str]]

    def path(self, split: str, side: str) -> Path:
        return self.root / f"{split}.{side}"


def make_corpus(root: Path, n_train: int = 1000) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    train = reverse_pairs(n_train, seed=0)
    seen = {s for s, _ in train}
    valid = reverse_pairs(20, seed=1)
    test = [p for p in reverse_pairs(80, seed=2) if p[0] not in seen][:50]
    for split, pairs in (("train", train), ("valid", valid), ("test", test)):
        write_parallel(pairs, root / f"{split}.src", root / f"{split}.tgt")
    return Corpus(root, test)


def recipe(corpus: Corpus, **sections: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict for the reverse task; `sections` update its sections key by key."""
    raw: dict[str, Any] = {
        "data": {
            "src_lang": "src",
            "tgt_lang": "tgt",
            "train": [
                {"src": str(corpus.path("train", "src")), "tgt": str(corpus.path("train", "tgt"))}
            ],
            "valid": [
                {"src": str(corpus.path("valid", "src")), "tgt": str(corpus.path("valid", "tgt"))}
            ],
            "test": [
                {"src": str(corpus.path("test", "src")), "tgt": str(corpus.path("test", "tgt"))}
            ],
        },
        "tokenizer": {"model_type": "unigram", "vocab_size": 30},
        "model": copy.deepcopy(TINY_MODEL),
        "train": copy.deepcopy(TINY_TRAIN),
        "decode": {"beam": 2, "alpha": 0.6, "max_len_a": 1.5, "max_len_b": 5},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@dataclass(frozen=True)
class TrainedRun:
    corpus: Corpus
    data_dir: Path
    run_dir: Path
    raw: dict[str, Any]  # the recipe dict it was trained with
    result: Any  # nmt_cli.train.TrainResult


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("reverse-corpus"))


@pytest.fixture(scope="session")
def reverse_data(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nmt_cli.config import config_from_dict
    from nmt_cli.preprocess import preprocess

    out = tmp_path_factory.mktemp("reverse-data") / "data"
    preprocess(config_from_dict(recipe(corpus)), out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def trained(
    corpus: Corpus, reverse_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainedRun:
    """One model trained to solve the reverse task, shared by every test that needs one."""
    from nmt_cli.config import config_from_dict
    from nmt_cli.train import train

    raw = recipe(corpus)
    run_dir = tmp_path_factory.mktemp("reverse-run") / "run"
    result = train(config_from_dict(raw), reverse_data, run_dir, device="cpu", show_progress=False)
    return TrainedRun(corpus, reverse_data, run_dir, raw, result)


@pytest.fixture(scope="session")
def checkpoint(trained: TrainedRun) -> Path:
    """best.pt of the shared run (weights, config and tokenizer; no training state)."""
    return trained.run_dir / "best.pt"


def other_tokenizer(tmp_path: Path) -> bytes:
    """A real SentencePiece model, trained on other text than the checkpoint's."""
    text = tmp_path / "other.txt"
    text.write_text("".join(f"alpha beta gamma delta {i}\n" for i in range(200)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "other"), vocab_size=40,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    return (tmp_path / "other.model").read_bytes()


# --- watching a training process ---------------------------------------------------------


def last_logged_step(run: Path) -> int:
    """The last step RUN/metrics.jsonl names (0 before its first line), while a training
    process may still be writing it (a line cut short is skipped)."""
    path = run / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return max(steps)


def wait_for(
    condition: Callable[[], bool], procs: list[subprocess.Popen], timeout: float = 180
) -> None:
    """Poll `condition` until it holds; fail if one of `procs` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), "a process exited early"
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        time.sleep(0.02)


# --- running the CLI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def nmt_subprocess(
    args: list[str], *, stdin: bytes | None = None, timeout: float = 300, cwd: Path | None = None
) -> Completed:
    """Run `nmt ARGS` in a fresh interpreter, with real stdin/stdout pipes."""
    proc = subprocess.run(
        [sys.executable, "-m", "nmt_cli.cli", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
    )
    return Completed(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture(scope="session")
def run_nmt() -> Callable[..., Completed]:
    """`run_nmt(["translate", ckpt], stdin=b"...")` -> Completed(returncode, stdout, stderr)."""
    return nmt_subprocess


@pytest.fixture(scope="session")
def make_recipe(corpus: Corpus) -> Callable[..., dict[str, Any]]:
    """`make_recipe(model={...}, train={...})`: a recipe dict for the reverse task."""
    return lambda **sections: recipe(corpus, **sections)


@pytest.fixture
def recipe_file(tmp_path: Path) -> Callable[..., Path]:
    """`recipe_file(raw, name="recipe.yaml")`: write a recipe dict as YAML under tmp_path."""
    return lambda raw, name="recipe.yaml": write_recipe(tmp_path / name, raw)
