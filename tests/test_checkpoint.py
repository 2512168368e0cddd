"""The checkpoint: one self-describing file that `torch.load(weights_only=True)` reads, clear
errors for anything else, and writes that never destroy the previous good file."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

import nmt_cli.checkpoint as checkpoint_module
from nmt_cli.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from nmt_cli.config import config_from_dict, config_to_dict
from nmt_cli.data.batching import collate
from nmt_cli.errors import CheckpointError, OutputError
from nmt_cli.inference.engines import load_translator
from nmt_cli.inference.torch_engine import TorchEngine
from nmt_cli.inference.translator import Translator
from nmt_cli.models import build_model
from nmt_cli.trainer import Trainer


class Foreign:
    """Any class: pickling it into a .pt makes the file unreadable with weights_only."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(scope="module")
def saved(make_recipe, reverse_data: Path, tmp_path_factory) -> tuple[Trainer, Path]:
    """A trainer after a few updates, and the checkpoint it wrote (with training state)."""
    cfg = config_from_dict(make_recipe(model={"dropout": 0.1, "attention": "concat"}))
    trainer = Trainer(cfg, reverse_data, tmp_path_factory.mktemp("ckpt"), torch.device("cpu"))
    batches = trainer.epoch_batches()
    for i in range(3):
        trainer.update(batches[i : i + 1])
        trainer.step += 1
    path = trainer.run_dir / "last.pt"
    trainer.save(path, {"valid_bleu": 12.5}, with_train_state=True)
    return trainer, path


def test_loads_with_weights_only(saved) -> None:
    trainer, path = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert set(raw) == {
        "format",
        "format_version",
        "versions",
        "created_at",
        "config",
        "model_state",
        "tokenizer",
        "step",
        "metrics",
        "train_state",
    }
    assert all(type(v) is str for v in raw["versions"].values())
    assert set(raw["versions"]) == {"nmt_cli", "torch", "sentencepiece", "python"}
    assert raw["step"] == 3 and raw["metrics"] == {"valid_bleu": 12.5}
    assert config_from_dict(raw["config"]) == trainer.cfg
    assert raw["config"] == config_to_dict(trainer.cfg)
    assert raw["config"]["model"]["type"] == "rnn"
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in raw["model_state"])
    tok = raw["tokenizer"]
    assert tok["src_model"] == trainer.src_tok.model_bytes
    assert tok["src_sha256"] == hashlib.sha256(tok["src_model"]).hexdigest()
    assert tok["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert set(raw["train_state"]) >= {"optimizer", "epoch", "batch_in_epoch", "torch_rng"}


def test_round_trip_gives_identical_outputs(saved) -> None:
    trainer, path = saved
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg.model, trainer.src_tok.vocab_size, trainer.tgt_tok.vocab_size, True)
    model.load_state_dict(ckpt["model_state"])
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    batch = collate([trainer.train_data.pair(i) for i in range(5)], torch.device("cpu"))
    trainer.model.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(*batch[:3]), trainer.model(*batch[:3]))

    # The .pt alone is enough to translate, and gives what the in-memory model gives.
    sources = ["1 2 3", "9 8 7 6 5", ""]
    from_file = load_translator(path, torch.device("cpu"))
    in_memory = Translator(TorchEngine.in_training(
        trainer.cfg, trainer.model, trainer.src_tok, trainer.tgt_tok, torch.device("cpu")
    ))  # fmt: skip
    got = [[(c.text, c.score) for c in t.nbest] for t in from_file.translate(sources)]
    assert got == [[(c.text, c.score) for c in t.nbest] for t in in_memory.translate(sources)]


def test_inference_only_file_has_no_train_state(saved, tmp_path: Path) -> None:
    trainer, _ = saved
    path = tmp_path / "best.pt"
    trainer.save(path, {}, with_train_state=False)
    assert "train_state" not in load_checkpoint(path)
    assert path.stat().st_size < (trainer.run_dir / "last.pt").stat().st_size


# --- files that are not (readable) checkpoints --------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("size", ["half", "first_100_bytes", "empty"])
def test_truncated(saved, tmp_path: Path, size: str) -> None:
    data = saved[1].read_bytes()
    cut = {"half": len(data) // 2, "first_100_bytes": 100, "empty": 0}[size]
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["random", "text", "zip_magic"])
def test_random_bytes(tmp_path: Path, content: str) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(
        {
            "random": os.urandom(4096),
            "text": b"model:\n  type: rnn\n" * 20,  # e.g. a recipe passed by mistake
            "zip_magic": b"PK\x03\x04" + os.urandom(200),
        }[content]
    )
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError, match="not an nmt_cli checkpoint.*nmt_cli.checkpoint"):
        load_checkpoint(path)
    torch.save([torch.zeros(2)], path)  # not even a dict
    with pytest.raises(CheckpointError, match="not an nmt_cli checkpoint"):
        load_checkpoint(path)


def test_foreign_objects_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Foreign()}, path)
    with pytest.raises(CheckpointError, match="objects beyond plain data"):
        load_checkpoint(path)
    with path.open("wb") as handle:  # a plain (non-zip) pickle
        pickle.dump(Foreign(), handle)
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_checkpoint(path)


def test_newer_format_version(saved, tmp_path: Path) -> None:
    raw = torch.load(saved[1], weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}, newer.*upgrade"):
        load_checkpoint(path)


def test_older_versions_are_migrated(saved, tmp_path: Path, monkeypatch) -> None:
    """Pretend the current format is 2: a version-1 file goes through MIGRATIONS[1]."""
    calls = []

    def migrate(payload):
        calls.append(payload["format_version"])
        return {**payload, "metrics": {**payload["metrics"], "migrated": True}}

    monkeypatch.setattr(checkpoint_module, "FORMAT_VERSION", FORMAT_VERSION + 1)
    monkeypatch.setitem(checkpoint_module.MIGRATIONS, FORMAT_VERSION, migrate)
    ckpt = load_checkpoint(saved[1])
    assert calls == [FORMAT_VERSION]
    assert ckpt["format_version"] == FORMAT_VERSION + 1
    assert ckpt["metrics"]["migrated"] is True


# --- atomic writes ----------------------------------------------------------------------------


def test_failed_save_keeps_the_previous_file(saved, tmp_path: Path, monkeypatch) -> None:
    trainer, _ = saved
    path = tmp_path / "last.pt"
    trainer.save(path, {"good": 1.0}, with_train_state=False)
    good = path.read_bytes()

    def broken_save(obj, out, *args, **kwargs):
        out.write(b"PK\x03\x04 half a zip file")  # then the disk is full:
        out.handle = open("/dev/full", "wb", buffering=0)  # noqa: SIM115
        out.write(b"the rest")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="No space left on device.*previous file is intact"):
        trainer.save(path, {"bad": 1.0}, with_train_state=True)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left
    monkeypatch.undo()
    assert load_checkpoint(path)["metrics"] == {"good": 1.0}


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    for step in (1, 2):
        save_checkpoint(
            path,
            config={},
            model_state={"w": torch.ones(2) * step},
            tokenizer={},
            step=step,
            metrics={},
        )
    assert torch.load(path, weights_only=True)["step"] == 2  # a stub: load_checkpoint refuses it
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
