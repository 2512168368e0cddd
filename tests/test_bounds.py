"""Bounds on every size and value a recipe, a checkpoint or an option can set (issue 14).

Each value out of its range is one `error:` line naming the key and the allowed range, never a
traceback, a hang or an allocation of gigabytes. Training refuses before its first update what
would otherwise fail late (validation sentences over model.max_len, an accumulation no epoch
can fill), skips training pairs over model.max_len, and saves last.pt on SIGHUP.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Corpus, recipe, reverse_pairs, write_parallel, write_recipe
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.cli import app
from nmt_cli.config import MODEL_CONFIGS, Config, config_from_dict
from nmt_cli.data.batching import plan_batches
from nmt_cli.errors import ConfigError
from nmt_cli.inference.ctranslate2 import decode_settings
from nmt_cli.preprocess import preprocess
from nmt_cli.runtime import has_fast_bf16

# A CPU with native bf16 runs bf16 LSTMs; elsewhere oneDNN has no kernel for them.
NO_BF16 = pytest.mark.skipif(has_fast_bf16(torch.device("cpu")), reason="this CPU runs bf16")

TINY_TRANSFORMER = {"type": "transformer", "d_model": 32, "heads": 2, "ff_dim": 64,
                    "enc_layers": 1, "dec_layers": 1, "dropout": 0.0, "max_len": 40}  # fmt: skip


def one_error_line(stderr: str) -> str:
    """stderr holds exactly one line, an `error:` line (no traceback); return it."""
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An input file for `nmt translate --input`."""
    path = tmp_path_factory.mktemp("input") / "input.txt"
    path.write_text("1 2 3\n", encoding="utf-8")
    return path


# --- every number has a range -------------------------------------------------------------


def _dataclasses() -> list[type]:
    found, todo = [], [Config, *MODEL_CONFIGS.values()]
    while todo:
        cls = todo.pop()
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for inner in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(inner) and inner not in found + todo:
                    todo.append(inner)
    return found


def test_every_numeric_setting_declares_its_range() -> None:
    missing = []
    for cls in _dataclasses():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if {int, float} & {hint, *typing.get_args(hint)} and "range" not in f.metadata:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []


# --- recipe values ------------------------------------------------------------------------

RECIPE_CASES = [
    ({"model": TINY_TRANSFORMER | {"heads": 0}}, "model.heads must be in [1, 1024], got 0"),
    ({"train": {"lr": float("nan")}}, "train.lr must be in [0, inf), got nan"),
    ({"train": {"lr": -1e-3}}, "train.lr must be in [0, inf), got -0.001"),
    ({"train": {"betas": [0.9, 1.5]}}, "train.betas[1] must be in [0, 1), got 1.5"),
    ({"train": {"seed": 10**23}}, "train.seed must be in [0, 2147483647], got 10000000000"),
    ({"train": {"seed": "1e23"}}, "train.seed must be int, got '1e23'"),
    ({"model": {"dropout": 2}}, "model.dropout must be in [0, 1), got 2.0"),
    ({"model": {"emb_dim": 0}}, "model.emb_dim must be in [1, 65536], got 0"),
    ({"model": {"hidden_dim": -64}}, "model.hidden_dim must be in [1, 65536], got -64"),
    ({"train": {"label_smoothing": 2}}, "train.label_smoothing must be in [0, 1), got 2.0"),
    ({"tokenizer": {"vocab_size": 10**12}}, "tokenizer.vocab_size must be in [8, 1000000]"),
    ({"decode": {"beam": 10**9}}, "decode.beam must be in [1, 1000], got 1000000000"),
    ({"train": {"max_steps": 0}}, "train.max_steps must be in [1, 1000000000], got 0"),
    ({"train": {"max_seconds": float("inf")}}, "train.max_seconds must be in [0, inf), got inf"),
    ({"train": {"batch_tokens": 0}}, "train.batch_tokens must be in [1, 10000000], got 0"),
    ({"decode": {"max_len_a": -1}}, "decode.max_len_a must be in [0, 100], got -1.0"),
    ({"data": {"clean": {"max_ratio": float("nan")}}}, "data.clean.max_ratio must be in [1, inf)"),
    pytest.param(
        {"train": {"precision": "bf16"}},
        "bf16 LSTMs (model.type rnn) have no kernel",
        marks=NO_BF16,
    ),
]


@pytest.mark.parametrize(("sections", "message"), RECIPE_CASES, ids=lambda c: str(c)[:40])
def test_recipe_values_out_of_range_are_one_line(
    sections: dict, message: str, make_recipe, recipe_file, reverse_data: Path, tmp_path: Path,
    cli: CliRunner,
) -> None:  # fmt: skip
    raw = make_recipe(**sections)
    if sections.get("model", {}).get("type") == "transformer":
        raw["model"] = sections["model"]  # without the RNN's keys
    run = tmp_path / "run"
    result = cli.invoke(app, ["train", str(recipe_file(raw)), "--data", str(reverse_data),
                              "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 1
    assert message in one_error_line(result.stderr)
    assert not list(run.glob("*.pt"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.seed=100000000000000000000000", "train.seed must be in [0, 2147483647]"),
        ("decode.top_p=0", "decode.top_p must be in (0, 1], got 0.0"),
        ("model.max_len=1" + "0" * 5000, "the value is not valid YAML (Exceeds the limit"),
    ],
)
def test_set_values_out_of_range_are_one_line(
    setting: str, message: str, recipe_file, make_recipe, reverse_data: Path, tmp_path: Path,
    cli: CliRunner,
) -> None:  # fmt: skip
    result = cli.invoke(app, ["train", str(recipe_file(make_recipe())), "--data",
                              str(reverse_data), "--out", str(tmp_path / "run"), "--set",
                              setting])  # fmt: skip
    assert result.exit_code == 1
    assert message in one_error_line(result.stderr)


def test_a_yaml_alias_bomb_is_one_short_line_and_quick(tmp_path: Path, reverse_data: Path) -> None:
    """Nine levels of nine aliases: a 350-byte recipe whose value holds 9^9 strings. The error
    must show a bounded part of it, and nothing may walk it whole."""
    lines = ["train:", "  seed:", "    - &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"    - &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nmt_cli", "train", str(bomb), "--data",
                           str(reverse_data), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=20)  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 20
    line = one_error_line(done.stderr)
    assert line.startswith("error: train.seed must be int, got [[") and len(line) < 300


def test_an_alias_bomb_in_a_checkpoint_config_is_one_line(
    checkpoint: Path, lines: Path, tmp_path: Path, cli: CliRunner
) -> None:
    """Pickle keeps shared references as YAML aliases do: a small file, a huge value."""
    bomb: list = ["x"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    ckpt = load_checkpoint(checkpoint)
    config = ckpt["config"]
    config["model"]["type"] = bomb
    path = tmp_path / "bomb.pt"
    save_checkpoint(path, config=config, model_state=ckpt["model_state"],
                    tokenizer=ckpt["tokenizer"], step=ckpt["step"], metrics={})  # fmt: skip
    started = time.monotonic()
    result = cli.invoke(app, ["translate", str(path), "--device", "cpu", "--input", str(lines)])
    assert result.exit_code == 1 and time.monotonic() - started < 20
    assert "unknown model.type [[" in one_error_line(result.stderr)


# --- translate and eval options -------------------------------------------------------------

OPTION_CASES = [
    (["--sampling", "--temperature", "nan"], "decode.temperature must be in (0, 1000], got nan"),
    (["--max-len-b", str(10**20)], "decode.max_len_b must be in [0, 100000]"),
    (["--max-len-a", "nan"], "decode.max_len_a must be in [0, 100], got nan"),
    (["--max-len-a", "inf"], "decode.max_len_a must be in [0, 100], got inf"),
    (["--max-len-a", "-1"], "decode.max_len_a must be in [0, 100], got -1.0"),
    (["--beam", "100000000"], "decode.beam must be in [1, 1000], got 100000000"),
    (["--sampling", "--seed", str(10**23)], "decode.seed must be in [0, 2147483647]"),
    (["--batch-tokens", "-1"], "decode.batch_tokens must be in [0, 10000000], got -1"),
    (["--top-p", "1.5", "--sampling"], "decode.top_p must be in (0, 1], got 1.5"),
    (["--n-best", "3", "--beam", "2"], "n-best 3 with beam 2"),
    pytest.param(["--dtype", "bf16"], "bf16 LSTMs (model.type rnn) have no kernel", marks=NO_BF16),
    (["--dtype", "fp16"], "fp16 LSTMs (model.type rnn) have no kernel on this CPU"),
    (["--dtype", "fp8"], "precision 'fp8' is unknown; use one of auto, fp32, bf16, fp16"),
]


@pytest.mark.parametrize(("options", "message"), OPTION_CASES, ids=lambda c: " ".join(c)[:30])
def test_translate_options_out_of_range_are_one_line(
    options: list[str], message: str, checkpoint: Path, lines: Path, cli: CliRunner
) -> None:
    result = cli.invoke(app, ["translate", str(checkpoint), "--device", "cpu", "--input",
                              str(lines), *options])  # fmt: skip
    assert result.exit_code == 1 and result.stdout == ""
    assert message in one_error_line(result.stderr)


def test_eval_beam_out_of_range_is_one_line(
    checkpoint: Path, corpus: Corpus, cli: CliRunner
) -> None:
    result = cli.invoke(app, ["eval", str(checkpoint), "--src", str(corpus.path("test", "src")),
                              "--ref", str(corpus.path("test", "tgt")), "--beam", "100000000",
                              "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 1
    assert "decode.beam must be in [1, 1000]" in one_error_line(result.stderr)


def test_exported_decode_settings_are_range_checked() -> None:
    """The CTranslate2 engine's settings come from the export's metadata and the options."""
    with pytest.raises(ConfigError, match=r"decode.beam must be in \[1, 1000\], got 100000000$"):
        decode_settings({"beam": 4}, {"beam": 100_000_000})
    with pytest.raises(ConfigError, match=r"decode.alpha must be in \[0, 10\], got '0.6'$"):
        decode_settings({"alpha": "0.6"}, {})


def test_demo_seed_out_of_range_is_one_line_before_any_file(tmp_path: Path, cli: CliRunner) -> None:
    result = cli.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--seed", str(10**23)])
    assert result.exit_code == 1
    assert "train.seed must be in [0, 2147483647]" in one_error_line(result.stderr)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["translate", "CKPT", "--seed", "1e23"], ["'--seed'", "integer", "translate --help"]),
        (["translate", "CKPT", "--max-len-b", "1e20"], ["'--max-len-b'", "integer"]),
        (["eval", "--hyp", "CKPT"], ["'--ref'", "eval --help"]),
        (["translate"], ["'checkpoints'"]),
        (["tarnslate", "CKPT"], ["No such command", "--help"]),
    ],
)
def test_usage_errors_are_one_line(checkpoint: Path, run_nmt, args: list[str], words) -> None:
    """A value typer cannot parse is one `error:` line naming the option, and exit 2 (the
    usage-error code), instead of click's framed box."""
    done = run_nmt([str(checkpoint) if a == "CKPT" else a for a in args])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ")
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize("nproc", ["0", "-1", "100000"])
def test_nproc_out_of_range_is_one_line(run_nmt, tmp_path: Path, nproc: str) -> None:
    done = run_nmt(["train", "r.yaml", "--data", "d", "--out", str(tmp_path / "run"),
                    "--nproc", nproc])  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("error: --nproc")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run").exists()


def test_dtype_auto_translates_with_an_lstm_model_on_cpu(
    checkpoint: Path, lines: Path, cli: CliRunner
) -> None:
    result = cli.invoke(app, ["translate", str(checkpoint), "--device", "cpu", "--dtype", "auto",
                              "--beam", "1", "--input", str(lines)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "3 2 1\n"


# --- training refuses early what would fail late ------------------------------------------


@pytest.fixture(scope="module")
def long_pair_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reverse task with one 60-digit training pair and one 30-digit validation pair last."""
    root = tmp_path_factory.mktemp("long-pairs")
    long_train = " ".join("7" * 60)
    long_valid = " ".join("3" * 30)
    write_parallel(reverse_pairs(300, seed=0) + [(long_train, long_train)],
                   root / "train.src", root / "train.tgt")  # fmt: skip
    write_parallel(reverse_pairs(20, seed=1) + [(long_valid, long_valid)],
                   root / "valid.src", root / "valid.tgt")  # fmt: skip
    write_parallel(reverse_pairs(5, seed=2), root / "test.src", root / "test.tgt")
    out = root / "data"
    preprocess(config_from_dict(recipe(Corpus(root, []))), out, show_progress=False)
    return out


def test_a_validation_sentence_over_max_len_fails_before_training(
    long_pair_data: Path, tmp_path: Path, run_nmt
) -> None:
    run = tmp_path / "run"
    raw = recipe(Corpus(tmp_path, []), model={"max_len": 20},
                 train={"max_steps": 50, "valid_every": 50})  # fmt: skip
    done = run_nmt(["train", str(write_recipe(tmp_path / "r.yaml", raw)), "--data",
                    str(long_pair_data), "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [error] = done.stderr.strip().split("\n")
    assert error.startswith(f"error: validation sentence {long_pair_data / 'valid.src'} line 21 ")
    assert "more than model.max_len 20; raise model.max_len" in error
    assert not list(run.glob("*.pt"))


def test_training_pairs_over_max_len_are_skipped(
    long_pair_data: Path, tmp_path: Path, run_nmt
) -> None:
    raw = recipe(Corpus(tmp_path, []), model={"max_len": 40},
                 train={"max_steps": 3, "valid_every": 3})  # fmt: skip
    run = tmp_path / "run"
    done = run_nmt(["train", str(write_recipe(tmp_path / "r.yaml", raw)), "--data",
                    str(long_pair_data), "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipping 1 of 301 training pairs longer than model.max_len 40" in done.stderr
    assert load_checkpoint(run / "last.pt")["step"] == 3


def test_batches_leave_out_pairs_over_max_len_and_keep_the_order_otherwise() -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    src[[5, 70]], tgt[120] = 5000, 900
    batches, _ = plan_batches(src, tgt, 300, max_len=100).epoch(3, 2)
    kept = np.concatenate(batches)
    assert sorted(kept) == sorted(set(range(200)) - {5, 70, 120})
    short = np.delete(np.arange(200), [5, 70, 120])
    plain, _ = plan_batches(src[short], tgt[short], 300).epoch(3, 2)
    same, _ = plan_batches(src[short], tgt[short], 300, max_len=100).epoch(3, 2)
    assert [b.tolist() for b in plain] == [b.tolist() for b in same]
    assert [short[b].tolist() for b in plain] == [b.tolist() for b in batches]


def test_accumulation_no_epoch_can_fill_is_refused_at_once(
    make_recipe, recipe_file, reverse_data: Path, tmp_path: Path
) -> None:
    """It used to loop over empty epochs forever, deaf to Ctrl-C."""
    run = tmp_path / "run"
    path = recipe_file(make_recipe(train={"accum_steps": 5000}))
    done = subprocess.run([sys.executable, "-m", "nmt_cli", "train", str(path), "--data",
                           str(reverse_data), "--out", str(run), "--device", "cpu"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    error = one_error_line(done.stderr)
    assert error.startswith("error: an update takes train.accum_steps 5000 x 1 processes = 5000 "
                            "batches, but an epoch gives only ")  # fmt: skip
    assert "batches of train.batch_tokens 400; lower accum_steps or batch_tokens" in error
    assert not list(run.glob("*.pt"))


def test_a_checkpoint_config_naming_a_huge_model_is_refused_before_allocating(
    checkpoint: Path, tmp_path: Path
) -> None:
    """hidden_dim 65,536 is in range, but these weights are for 64: the config must be checked
    against the weights before the model is built, or translate asks for tens of gigabytes."""
    ckpt = load_checkpoint(checkpoint)
    config = ckpt["config"]
    config["model"] |= {"hidden_dim": 65_536, "emb_dim": 65_536}
    path = tmp_path / "huge.pt"
    save_checkpoint(path, config=config, model_state=ckpt["model_state"],
                    tokenizer=ckpt["tokenizer"], step=ckpt["step"], metrics={})  # fmt: skip
    limit = 6 << 30  # torch and its libraries map ~2 GB; the model would take 100 GB

    def small_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "nmt_cli", "translate", str(path), "--device",
                           "cpu"], input="1 2\n", capture_output=True, text=True, timeout=60,
                          preexec_fn=small_memory)  # fmt: skip
    assert done.returncode == 1
    assert "weights do not match its config" in one_error_line(done.stderr)


def test_a_file_name_with_a_newline_keeps_the_error_on_one_line(run_nmt, tmp_path: Path) -> None:
    """Messages name the user's paths; a newline in one is shown escaped, not as a line break."""
    missing = tmp_path / "two\nlines" / "model.pt"
    done = run_nmt(["translate", str(missing)], stdin=b"1 2\n")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path}/two\\nlines/model.pt; pass the path of a .pt "
        "from nmt train"
    ]
