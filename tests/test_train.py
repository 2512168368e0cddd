"""Training: real convergence on a small task, exact resume after Ctrl-C, checkpoints kept,
early stopping, and the learning-rate schedule."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from nmt_cli.average import average_checkpoints
from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import TrainConfig, config_from_dict
from nmt_cli.data.batching import plan_batches
from nmt_cli.data.shards import ShardReader
from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.inference.engines import load_translator
from nmt_cli.train import train
from nmt_cli.trainer import learning_rate


def read_metrics(run_dir: Path) -> tuple[dict[int, float], list[dict]]:
    """(step -> training loss, validation records) from metrics.jsonl."""
    losses, valids = {}, []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            assert record["step"] not in losses, f"step {record['step']} logged twice"
            losses[record["step"]] = record["loss"]
        else:
            valids.append(record)
    return losses, valids


def accuracy(checkpoint: Path, pairs: list[tuple[str, str]], **decode) -> float:
    translator = load_translator(checkpoint, torch.device("cpu"), decode)
    outputs = [t.text for t in translator.translate([s for s, _ in pairs])]
    return sum(out == ref for out, (_, ref) in zip(outputs, pairs, strict=True)) / len(pairs)


# --- convergence ------------------------------------------------------------------------------


def test_loss_falls(trained) -> None:
    assert trained.result.stopped_by == "max_steps"
    assert trained.result.steps == 600
    losses, valids = read_metrics(trained.run_dir)
    assert sorted(losses) == list(range(10, 601, 10))
    first, last = losses[10], sum(losses[s] for s in range(560, 601, 10)) / 5
    assert first > 2.0  # about log(vocabulary) at the start
    assert last < 0.1 * first
    assert [v["step"] for v in valids] == [300, 600]
    assert valids[-1]["valid_loss"] < 0.1
    assert valids[-1]["valid_bleu"] > 90


@pytest.mark.parametrize("beam", [1, 3])
def test_solves_held_out_reversals(trained, beam: int) -> None:
    assert len(trained.corpus.test) >= 40
    assert accuracy(trained.run_dir / "best.pt", trained.corpus.test, beam=beam) >= 0.9


def test_run_dir_contents(trained) -> None:
    names = sorted(p.name for p in trained.run_dir.iterdir())
    assert names == [".nmt-train.lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                     "step-300.pt", "step-600.pt", "train.log"]  # fmt: skip
    best = load_checkpoint(trained.run_dir / "best.pt")
    last = load_checkpoint(trained.run_dir / "last.pt")
    assert last["step"] == 600 and "train_state" in last
    assert best["step"] == trained.result.best_step
    assert best["metrics"]["valid_bleu"] == pytest.approx(trained.result.best_bleu)


# --- resume -----------------------------------------------------------------------------------

N = 12  # steps in every resume run


def resume_recipe(make_recipe, **train_values):
    return make_recipe(
        model={"dropout": 0.2},  # dropout draws random numbers: the RNG state must resume too
        train={
            "max_steps": N,
            "log_every": 1,
            "valid_every": 5,
            "batch_tokens": 2000,
            "warmup_steps": 4,
            "decay": "inverse_sqrt",
            "keep_last": 2,
            "label_smoothing": 0.1,
            **train_values,
        },
    )


def interrupt_at(k: int, presses: int = 1):
    def on_step(step: int) -> None:
        if step == k:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)

    return on_step


@pytest.fixture(scope="module")
def uninterrupted(make_recipe, reverse_data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train(
        config_from_dict(resume_recipe(make_recipe)),
        reverse_data,
        run,
        device="cpu",
        show_progress=False,
    )
    assert result.stopped_by == "max_steps" and result.steps == N
    return run


def epoch_end(reverse_data: Path, make_recipe) -> int:
    """The step that finishes the first epoch: resuming there must start epoch 2."""
    cfg = config_from_dict(resume_recipe(make_recipe))
    reader = ShardReader(reverse_data, "train")
    batches = plan_batches(reader.src_lengths, reader.tgt_lengths, cfg.train.batch_tokens)
    assert len(batches) < N - 1
    return len(batches)


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end", "validation_step"])
def test_resume_continues_exactly(
    where, uninterrupted: Path, make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    k = {"mid_epoch": 7, "epoch_end": epoch_end(reverse_data, make_recipe), "validation_step": 10}[
        where
    ]
    cfg = config_from_dict(resume_recipe(make_recipe))
    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job

    first = train(
        cfg, reverse_data, run, device="cpu", show_progress=False, on_step=interrupt_at(k)
    )
    assert first.stopped_by == "interrupted"
    assert first.steps == k
    assert load_checkpoint(run / "last.pt")["step"] == k
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored

    second = train(
        cfg, reverse_data, run, resume=run / "last.pt", device="cpu", show_progress=False
    )
    assert second.stopped_by == "max_steps"
    assert second.steps == N

    want_losses, want_valid = read_metrics(uninterrupted)
    got_losses, got_valid = read_metrics(run)
    assert sorted(got_losses) == list(range(1, N + 1))
    for step in range(k + 1, N + 1):
        assert got_losses[step] == pytest.approx(want_losses[step], abs=1e-6), step
    assert [v["step"] for v in got_valid] == [v["step"] for v in want_valid] == [5, 10, 12]
    for got, want in zip(got_valid, want_valid, strict=True):
        assert got["valid_loss"] == pytest.approx(want["valid_loss"], abs=1e-6)
        assert got["valid_bleu"] == pytest.approx(want["valid_bleu"], abs=1e-6)

    # Same weights at the end, and the same checkpoint files (keep_last 2).
    names = sorted(p.name for p in run.glob("*.pt"))
    assert names == sorted(p.name for p in uninterrupted.glob("*.pt"))
    assert names == ["best.pt", "last.pt", "step-10.pt", "step-12.pt"]
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(uninterrupted / "last.pt")
    assert got["step"] == want["step"] == N
    for name, tensor in want["model_state"].items():
        torch.testing.assert_close(got["model_state"][name], tensor, atol=1e-6, rtol=0)


def test_second_ctrl_c_aborts_at_once(make_recipe, reverse_data: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(resume_recipe(make_recipe))
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(
            cfg,
            reverse_data,
            tmp_path / "run",
            device="cpu",
            show_progress=False,
            on_step=interrupt_at(3, presses=2),
        )
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_resume_needs_training_state(
    uninterrupted: Path, make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    cfg = config_from_dict(resume_recipe(make_recipe))
    weights_only = average_checkpoints([uninterrupted / "best.pt"], tmp_path / "avg.pt")
    with pytest.raises(CheckpointError, match="no training state"):
        train(
            cfg,
            reverse_data,
            tmp_path / "run",
            resume=weights_only,
            device="cpu",
            show_progress=False,
        )


def test_resume_needs_the_same_model(
    uninterrupted: Path, make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    raw = resume_recipe(make_recipe)
    raw["model"]["hidden_dim"] = 32
    with pytest.raises(ConfigError, match="model section differs"):
        train(
            config_from_dict(raw),
            reverse_data,
            tmp_path / "run",
            resume=uninterrupted / "last.pt",
            device="cpu",
            show_progress=False,
        )


# --- early stopping ---------------------------------------------------------------------------


def frozen_recipe(make_recipe, patience: int):
    """lr 0: the model never changes, so validation BLEU never improves after the first."""
    return make_recipe(
        train={
            "lr": 0.0,
            "max_steps": 50,
            "valid_every": 2,
            "log_every": 1,
            "patience": patience,
            "keep_last": 2,
            "batch_tokens": 2000,
        }
    )


def test_early_stopping_after_patience_validations(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = train(
        config_from_dict(frozen_recipe(make_recipe, patience=2)),
        reverse_data,
        run,
        device="cpu",
        show_progress=False,
    )
    assert result.stopped_by == "early_stopping"
    assert result.steps == 6  # validations at 2 (best), 4 (no gain), 6 (no gain: stop)
    assert result.best_step == 2
    assert sorted(p.name for p in run.glob("*.pt")) == [
        "best.pt",
        "last.pt",
        "step-4.pt",
        "step-6.pt",
    ]
    assert load_checkpoint(run / "best.pt")["step"] == 2
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 6
    assert last["train_state"]["bad_validations"] == 2
    assert last["train_state"]["best_step"] == 2


def test_patience_zero_never_stops(make_recipe, reverse_data: Path, tmp_path: Path) -> None:
    raw = frozen_recipe(make_recipe, patience=0)
    raw["train"]["max_steps"] = 8
    result = train(
        config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu", show_progress=False
    )
    assert (result.stopped_by, result.steps, result.best_step) == ("max_steps", 8, 2)


def test_resume_keeps_the_early_stopping_counter(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    cfg = config_from_dict(frozen_recipe(make_recipe, patience=2))
    run = tmp_path / "run"
    first = train(
        cfg, reverse_data, run, device="cpu", show_progress=False, on_step=interrupt_at(5)
    )
    assert (first.stopped_by, first.steps) == ("interrupted", 5)
    second = train(
        cfg, reverse_data, run, resume=run / "last.pt", device="cpu", show_progress=False
    )
    assert (second.stopped_by, second.steps, second.best_step) == ("early_stopping", 6, 2)


# --- learning rate ----------------------------------------------------------------------------


def test_learning_rate_schedule() -> None:
    t = TrainConfig(lr=1.0, warmup_steps=4, decay="inverse_sqrt", max_steps=20)
    assert [learning_rate(t, s) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert learning_rate(t, 16) == pytest.approx(0.5)  # sqrt(4 / 16)
    t = TrainConfig(lr=1.0, warmup_steps=4, decay="linear", max_steps=20)
    assert learning_rate(t, 12) == pytest.approx(0.5)
    assert learning_rate(t, 20) == 0.0
    t = TrainConfig(lr=1.0, warmup_steps=0, decay="constant")
    assert learning_rate(t, 1) == learning_rate(t, 1000) == 1.0


def test_max_seconds_stops_with_a_checkpoint(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    raw = make_recipe(train={"max_steps": 1_000_000, "max_seconds": 2, "valid_every": 1_000_000})
    result = train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
                   show_progress=False)  # fmt: skip
    assert result.stopped_by == "time_limit"
    assert 0 < result.steps < 1_000_000
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == result.steps
    _, valids = read_metrics(tmp_path / "run")
    assert [v["step"] for v in valids] == [result.steps]  # validated at the stop


def test_valid_every_zero_trains_without_validating(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    raw = make_recipe(train={"max_steps": 4, "log_every": 2, "valid_every": 0})
    result = train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
                   show_progress=False)  # fmt: skip
    assert (result.stopped_by, result.steps, result.best_bleu) == ("max_steps", 4, None)
    logs, valids = read_metrics(tmp_path / "run")
    assert sorted(logs) == [2, 4] and valids == []
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("setting", ["log_every=0", "valid_every=-1"])
def test_intervals_out_of_range_are_config_errors(make_recipe, setting: str) -> None:
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=f"train.{key} must be in "):
        config_from_dict(make_recipe(train={key: int(value)}))


def test_tensorboard_gets_the_logged_scalars(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = make_recipe(train={"max_steps": 6, "log_every": 2, "valid_every": 6, "tensorboard": True})
    train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu", show_progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("valid_bleu")] == [6]


def test_tensorboard_missing_is_a_clear_error(
    make_recipe, reverse_data: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    raw = make_recipe(train={"max_steps": 2, "tensorboard": True})
    with pytest.raises(ConfigError, match=r"pip install 'nmt-cli\[tensorboard\]'"):
        train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
              show_progress=False)  # fmt: skip


def test_fp16_lstm_on_cpu_is_refused(make_recipe, reverse_data: Path, tmp_path: Path) -> None:
    raw = make_recipe(train={"max_steps": 2, "precision": "fp16"})
    with pytest.raises(ConfigError, match="fp16 LSTMs .model.type rnn. have no kernel on this CPU"):
        train(config_from_dict(raw), reverse_data, tmp_path / "run", device="cpu",
              show_progress=False)  # fmt: skip


TINY_TRANSFORMER = {"type": "transformer", "d_model": 32, "heads": 2, "ff_dim": 64,
                    "enc_layers": 1, "dec_layers": 1, "dropout": 0.0, "max_len": 40}  # fmt: skip


def test_compiled_training_matches_eager_and_compiles_each_shape_once(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    """Static shapes: two epochs and more draw every batch shape again (full batches and the
    remainder), and none of the repeats compiles anew."""
    losses = {}
    for compiled in (False, True):
        raw = make_recipe(train={"max_steps": 30, "log_every": 1, "valid_every": 30,
                                 "batch_tokens": 600, "static_shapes": True,
                                 "compile": compiled})  # fmt: skip
        raw["model"] = dict(TINY_TRANSFORMER)
        run = tmp_path / f"compile-{compiled}"
        torch._dynamo.reset()
        counters.clear()
        train(config_from_dict(raw), reverse_data, run, device="cpu", show_progress=False)
        losses[compiled], _ = read_metrics(run)
    reader = ShardReader(reverse_data, "train")
    plan = plan_batches(reader.src_lengths, reader.tgt_lengths, 600, max_len=40,
                        static_shapes=True)  # fmt: skip
    assert 30 >= 2 * len(plan) and len(plan.shapes()) == 2  # two epochs, two shapes
    assert counters["stats"]["unique_graphs"] == len(plan.shapes())
    for step, loss in losses[False].items():
        assert losses[True][step] == pytest.approx(loss, rel=1e-3), step
    ckpt = load_checkpoint(tmp_path / "compile-True" / "last.pt")
    assert not any(name.startswith("_orig_mod") for name in ckpt["model_state"])


def test_best_metric_loss_keeps_the_lowest_validation_loss(
    make_recipe, reverse_data: Path, tmp_path: Path
) -> None:
    """`best_metric: loss` ranks checkpoints by validation loss (BLEU ignored)."""
    raw = make_recipe(train={"max_steps": 12, "valid_every": 4, "best_metric": "loss"})
    run = tmp_path / "run"
    result = train(config_from_dict(raw), reverse_data, run, device="cpu", show_progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["valid_loss"] for row in rows if "valid_loss" in row}
    assert sorted(losses) == [4, 8, 12]
    lowest = min(losses, key=losses.get)
    assert result.best_step == lowest == load_checkpoint(run / "best.pt")["step"]
    with pytest.raises(ConfigError, match="best_metric"):
        config_from_dict(make_recipe(train={"best_metric": "chrf"}))


# --- training options: epochs, weight decay ------------------------------------------------


def test_max_epochs_stops_after_whole_passes(make_recipe, reverse_data: Path, tmp_path) -> None:
    raw = make_recipe(
        train={"max_steps": 100_000, "max_epochs": 2, "batch_tokens": 2000, "valid_every": 0}
    )
    cfg = config_from_dict(raw)
    reader = ShardReader(reverse_data, "train")
    plan = plan_batches(reader.src_lengths, reader.tgt_lengths, 2000, max_len=cfg.model.max_len)
    per_epoch = len(plan.epoch(cfg.train.seed, 0)[0])
    run = tmp_path / "run"
    result = train(cfg, reverse_data, run, device="cpu", show_progress=False)
    assert (result.stopped_by, result.steps) == ("max_epochs", 2 * per_epoch)
    assert "reached train.max_epochs" in (run / "train.log").read_text()
    again = train(cfg, reverse_data, run, device="cpu", show_progress=False)  # the same command
    assert (again.stopped_by, again.steps) == ("max_epochs", 2 * per_epoch)


def test_weight_decay_shrinks_the_weights(make_recipe, reverse_data: Path, tmp_path) -> None:
    """AdamW's decay pulls every weight towards 0 by lr x decay per update, beyond Adam's step."""

    def weight_norm(decay: float) -> float:
        raw = make_recipe(train={"max_steps": 20, "valid_every": 0, "weight_decay": decay})
        run = tmp_path / f"decay-{decay}"
        train(config_from_dict(raw), reverse_data, run, device="cpu", show_progress=False)
        state = load_checkpoint(run / "last.pt")
        groups = state["train_state"]["optimizer"]["param_groups"]
        assert [g["weight_decay"] for g in groups] == [decay]
        return float(sum(w.float().norm() ** 2 for w in state["model_state"].values()) ** 0.5)

    assert weight_norm(1.0) < 0.99 * weight_norm(0.0)
