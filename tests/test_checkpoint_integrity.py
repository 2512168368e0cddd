"""Checkpoints that are damaged, altered or not files at all: every command that reads one
(translate, eval, average, export, train --resume) refuses it with one line naming the
checkpoint and what is wrong, never a traceback, a hang, or a model that translates garbage."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import other_tokenizer

from nmt_cli.average import average_checkpoints
from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import config_from_dict
from nmt_cli.errors import CheckpointError
from nmt_cli.evaluate import evaluate
from nmt_cli.inference.engines import load_translator
from nmt_cli.train import train

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def last(trained) -> Path:
    """last.pt: every field, training state included, so train --resume can read it too."""
    return trained.run_dir / "last.pt"


@pytest.fixture(scope="module")
def payload(last: Path) -> dict[str, Any]:
    return torch.load(last, map_location="cpu", weights_only=True)


def variant(payload: dict[str, Any], edit: Edit, path: Path) -> Path:
    changed = copy.deepcopy(payload)
    edit(changed)
    torch.save(changed, path)
    return path


def assert_one_line(message: str, path: Path, *fragments: str) -> None:
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


def drop(*keys: str) -> Edit:
    def edit(payload: dict[str, Any]) -> None:
        *parents, leaf = keys
        section = payload
        for key in parents:
            section = section[key]
        del section[leaf]

    return edit


def put(value: Any, *keys: str) -> Edit:
    def edit(payload: dict[str, Any]) -> None:
        *parents, leaf = keys
        section = payload
        for key in parents:
            section = section[key]
        section[leaf] = value

    return edit


def first_weight(payload: dict[str, Any]) -> str:
    return next(iter(payload["model_state"]))


def misshape(payload: dict[str, Any]) -> None:
    name = first_weight(payload)
    payload["model_state"][name] = torch.zeros(3, 5)


FIELDS = ["config", "model_state", "tokenizer", "step", "metrics"]
TOKENIZER_FIELDS = ["joint", "src_model", "tgt_model", "src_sha256", "tgt_sha256", "special_ids"]
TENSOR = torch.zeros(2)
BAD_VERSIONS = {"0": 0, "-1": -1, "True": True, "str": "1", "float": 1.0, "2**40": 2**40}

# (id, edit, what the one line must say); every one is refused by load_checkpoint itself
BROKEN: list[tuple[str, Edit, str]] = [
    *[(f"no-{field}", drop(field), f"lacks the field {field}") for field in FIELDS],
    *[
        (f"no-tokenizer.{field}", drop("tokenizer", field), f"lacks the field tokenizer.{field}")
        for field in TOKENIZER_FIELDS
    ],
    ("no-format_version", drop("format_version"), "no valid checkpoint format version"),
    *[
        (f"version-{label}", put(value, "format_version"), "no valid checkpoint format version")
        for label, value in BAD_VERSIONS.items()
    ],
    ("config-str", put("rnn", "config"), "field config must be a mapping"),
    ("config.model-str", put("rnn", "config", "model"), "its config is invalid"),
    ("config.model.type", put("nope", "config", "model", "type"), "its config is invalid"),
    ("config-unknown-key", put({}, "config", "bogus"), "its config is invalid"),
    ("model_state-list", put([TENSOR], "model_state"), "field model_state must be"),
    ("model_state-value", put({"w": 1.0}, "model_state"), "field model_state must map"),
    ("model_state-key", put({1: TENSOR}, "model_state"), "field model_state must map"),
    ("tokenizer-bytes", put(b"spm", "tokenizer"), "field tokenizer must be a mapping"),
    ("step-str", put("3", "step"), "field step must be a non-negative integer"),
    ("step-bool", put(True, "step"), "field step must be a non-negative integer"),
    ("step-float", put(3.0, "step"), "field step must be a non-negative integer"),
    ("step-negative", put(-1, "step"), "field step is negative"),
    ("metrics-list", put([1.0], "metrics"), "field metrics must be a mapping"),
    ("train_state-str", put("x", "train_state"), "field train_state must be a mapping"),
    ("tokenizer.joint-str", put("yes", "tokenizer", "joint"), "tokenizer.joint must be"),
    ("tokenizer.joint-int", put(1, "tokenizer", "joint"), "tokenizer.joint must be"),
    ("tokenizer.src_model-str", put("x", "tokenizer", "src_model"), "tokenizer.src_model"),
    ("tokenizer.tgt_model-none", put(None, "tokenizer", "tgt_model"), "tokenizer.tgt_model"),
    ("tokenizer.src_sha256-int", put(1, "tokenizer", "src_sha256"), "tokenizer.src_sha256"),
    ("tokenizer.src_sha256-short", put("ab", "tokenizer", "src_sha256"), "not a SHA-256"),
    ("tokenizer.tgt_sha256-nonhex", put("g" * 64, "tokenizer", "tgt_sha256"), "not a SHA-256"),
    ("tokenizer.special_ids-list", put([0, 1], "tokenizer", "special_ids"), "special_ids must"),
    ("weight-nan", put(torch.tensor([1.0, math.nan]), "model_state", "w"), "NaN or infinite"),
    ("weight-inf", put(torch.tensor([-math.inf]), "model_state", "w"), "NaN or infinite"),
]

# (id, edit): weights that load but do not fit the checkpoint's config
MISFIT: list[tuple[str, Edit]] = [
    ("missing-weight", lambda p: p["model_state"].pop(first_weight(p))),
    ("extra-weight", put(TENSOR, "model_state", "extra.weight")),
    ("wrong-shape", misshape),
]


def run_translate(path: Path, trained, tmp_path: Path) -> None:
    load_translator(path, torch.device("cpu"))


def run_eval(path: Path, trained, tmp_path: Path) -> None:
    corpus = trained.corpus
    evaluate(refs=[corpus.path("test", "tgt")], checkpoint=path, src=corpus.path("test", "src"),
             device="cpu")  # fmt: skip


def run_average(path: Path, trained, tmp_path: Path) -> None:
    average_checkpoints([path], tmp_path / "avg.pt")


def run_export(path: Path, trained, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from nmt_cli.inference.export import export_ctranslate2

    export_ctranslate2(path, tmp_path / "export")


def run_resume(path: Path, trained, tmp_path: Path) -> None:
    train(config_from_dict(trained.raw), trained.data_dir, tmp_path / "run", resume=path,
          device="cpu", show_progress=False)  # fmt: skip


COMMANDS = {
    "translate": run_translate,
    "eval": run_eval,
    "average": run_average,
    "export": run_export,
    "resume": run_resume,
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_fields_are_one_line_in_every_command(
    payload, trained, tmp_path: Path, command: str, edit: Edit, expected: str
) -> None:
    path = variant(payload, edit, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as info:
        COMMANDS[command](path, trained, tmp_path)
    assert_one_line(str(info.value), path, expected)
    assert not (tmp_path / "avg.pt").exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("edit", [c[1] for c in MISFIT], ids=[c[0] for c in MISFIT])
def test_weights_that_do_not_fit_the_config_are_one_line(
    payload, trained, tmp_path: Path, command: str, edit: Edit
) -> None:
    path = variant(payload, edit, tmp_path / "misfit.pt")
    load_checkpoint(path)  # the file itself is sound: the reader that builds the model refuses
    with pytest.raises(CheckpointError) as info:
        COMMANDS[command](path, trained, tmp_path)
    # export refuses the RNN before it builds anything; the others name the misfit
    expected = "Transformer checkpoints only" if command == "export" else "do not match its config"
    assert_one_line(str(info.value), path, expected)
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (drop("train_state", "torch_rng"), "lacks the field train_state.torch_rng"),
        (put("3", "train_state", "epoch"), "train_state.epoch has a wrong type"),
        (put(-1, "train_state", "batch_in_epoch"), "train_state.batch_in_epoch has a wrong"),
        (put({}, "train_state", "optimizer"), "optimizer, updater or RNG state is unreadable"),
        (put(torch.zeros(3), "train_state", "torch_rng"), "RNG state is unreadable"),
    ],
    ids=["no-torch_rng", "epoch-str", "batch-negative", "optimizer-empty", "rng-floats"],
)
def test_broken_training_state_is_one_line(
    payload, trained, tmp_path: Path, edit: Edit, expected: str
) -> None:
    path = variant(payload, edit, tmp_path / "state.pt")
    with pytest.raises(CheckpointError) as info:
        run_resume(path, trained, tmp_path)
    assert_one_line(str(info.value), path, expected)


# --- tampering that loads without complaint unless checked ------------------------------------


def test_a_swapped_tokenizer_is_refused(payload, tmp_path: Path, run_nmt) -> None:
    """New model bytes under the old hash: before, it translated garbage with exit 0."""
    swapped = other_tokenizer(tmp_path)
    path = variant(payload, put(swapped, "tokenizer", "src_model"), tmp_path / "swapped.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(str(info.value), path, "source tokenizer does not match the SHA-256")
    done = run_nmt(["translate", str(path), "--device", "cpu"], stdin=b"1 2 3\n")
    assert_cli_refused(done, path, "does not match the SHA-256")


def test_tokenizer_bytes_that_are_no_model_name_the_checkpoint(
    payload, tmp_path: Path, run_nmt
) -> None:
    def garbage(payload: dict[str, Any]) -> None:
        import hashlib

        tokenizer = payload["tokenizer"]
        tokenizer["src_model"] = tokenizer["tgt_model"] = b"not a sentencepiece model"
        digest = hashlib.sha256(b"not a sentencepiece model").hexdigest()
        tokenizer["src_sha256"] = tokenizer["tgt_sha256"] = digest

    path = variant(payload, garbage, tmp_path / "garbage-spm.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(str(info.value), path, "source tokenizer is not a SentencePiece model")
    assert "preprocess" not in str(info.value)
    done = run_nmt(["translate", str(path), "--device", "cpu"], stdin=b"1 2 3\n")
    assert_cli_refused(done, path, "is not a SentencePiece model")


def flip_a_weight_bit(source: Path, path: Path) -> str:
    """Copy `source` to `path` with one low mantissa bit flipped in its largest weight, in
    place inside the zip: torch.load still reads it, as a slightly different number."""
    state = torch.load(source, weights_only=True)["model_state"]
    name = max(state, key=lambda n: state[n].numel())
    data = bytearray(source.read_bytes())
    offset = data.find(state[name].contiguous().numpy().tobytes())
    assert offset > 0
    data[offset + 4 * (state[name].numel() // 2)] ^= 0x01
    path.write_bytes(bytes(data))
    return name


def test_a_flipped_bit_in_the_weights_is_refused(last: Path, tmp_path: Path, run_nmt) -> None:
    path = tmp_path / "flipped.pt"
    name = flip_a_weight_bit(last, path)
    flipped = torch.load(path, weights_only=True)["model_state"][name]  # torch sees nothing
    assert not torch.equal(flipped, torch.load(last, weights_only=True)["model_state"][name])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(str(info.value), path, "is corrupt", "fails its CRC check")
    done = run_nmt(["translate", str(path), "--device", "cpu"], stdin=b"1 2 3\n")
    assert_cli_refused(done, path, "fails its CRC check")


def test_a_nan_weight_is_refused_naming_the_tensor(payload, tmp_path: Path, run_nmt) -> None:
    name = first_weight(payload)

    def poison(payload: dict[str, Any]) -> None:
        payload["model_state"][name].view(-1)[0] = math.nan

    path = variant(payload, poison, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(str(info.value), path, f"weight {name} holds NaN or infinite values")
    done = run_nmt(["translate", str(path), "--device", "cpu"], stdin=b"1 2 3\n")
    assert_cli_refused(done, path, "holds NaN or infinite values")


def test_large_finite_weights_are_accepted(payload, tmp_path: Path) -> None:
    """Their sum overflows to infinity; only the elementwise test may refuse a tensor."""
    huge = torch.full((4,), 3e38)
    path = variant(payload, put(huge, "model_state", "huge"), tmp_path / "huge.pt")
    assert torch.equal(load_checkpoint(path)["model_state"]["huge"], huge)


def test_names_from_the_file_are_bounded_in_messages(payload, tmp_path: Path) -> None:
    name = "x\n" * 50_000
    path = variant(payload, put(torch.tensor([math.nan]), "model_state", name), tmp_path / "n.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(str(info.value), path, "holds NaN")
    assert len(str(info.value)) < 400


# --- paths that are not regular files -----------------------------------------------------


def assert_cli_refused(done, path: Path, *fragments: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    for fragment in (str(path), *fragments):
        assert fragment in lines[0], lines[0]


def test_a_fifo_is_not_opened(tmp_path: Path, run_nmt) -> None:
    """Reading a FIFO with no writer would block forever; before, it said "not found"."""
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file \\(a FIFO\\)"):
        load_checkpoint(fifo)
    done = run_nmt(["translate", str(fifo), "--device", "cpu"], stdin=b"1 2 3\n", timeout=60)
    assert_cli_refused(done, fifo, "is not a regular file (a FIFO)")
    done = run_nmt(["average", str(fifo), "--out", str(tmp_path / "avg.pt")], timeout=60)
    assert_cli_refused(done, fifo, "is not a regular file")


def test_a_directory_or_a_device_is_not_a_checkpoint(tmp_path: Path, run_nmt) -> None:
    with pytest.raises(CheckpointError, match="is not a regular file \\(a directory\\)"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is not a regular file \\(a character device\\)"):
        load_checkpoint("/dev/null")
    done = run_nmt(["translate", str(tmp_path), "--device", "cpu"], stdin=b"1 2 3\n", timeout=60)
    assert_cli_refused(done, tmp_path, "is not a regular file (a directory)")


# --- the CLI: one `error:` line for each command --------------------------------------------


def test_each_command_prints_one_line(payload, trained, tmp_path: Path, run_nmt,
                                      recipe_file) -> None:  # fmt: skip
    path = variant(payload, put(0, "format_version"), tmp_path / "v0.pt")
    test_src, test_ref = trained.corpus.path("test", "src"), trained.corpus.path("test", "tgt")
    commands = {
        "translate": ["translate", str(path), "--device", "cpu"],
        "eval": ["eval", str(path), "--src", str(test_src), "--ref", str(test_ref),
                 "--device", "cpu"],
        "average": ["average", str(path), "--out", str(tmp_path / "avg.pt")],
        "export": ["export", str(path), "--format", "ctranslate2", "--out",
                   str(tmp_path / "export")],
        "resume": ["train", str(recipe_file(trained.raw)), "--data", str(trained.data_dir),
                   "--out", str(tmp_path / "run"), "--resume", str(path), "--device", "cpu"],
    }  # fmt: skip
    for args in commands.values():
        done = run_nmt(args, stdin=b"1 2 3\n")
        assert_cli_refused(done, path, "no valid checkpoint format version")
    assert not (tmp_path / "avg.pt").exists() and not (tmp_path / "export").exists()
