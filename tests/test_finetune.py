"""Fine-tuning: vocabulary reuse, `--init-from`, frozen parts, kept optimizer state, and the
one-line refusals of a checkpoint whose weights cannot start the run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import reverse_pairs, write_parallel

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import config_from_dict
from nmt_cli.data.shards import read_manifest
from nmt_cli.errors import ConfigError
from nmt_cli.preprocess import preprocess
from nmt_cli.train import train

LONG = (8, 12)  # the related task: reverse longer sequences than the base model saw (3-7)


def read_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long-reversals")
    splits = {"train": reverse_pairs(600, 10, LONG), "valid": reverse_pairs(20, 11, LONG)}
    for split, pairs in splits.items():
        write_parallel(pairs, root / f"{split}.src", root / f"{split}.tgt")
    return root


def long_recipe(make_recipe, root: Path, **sections) -> dict:
    raw = make_recipe(**sections)
    raw["data"]["train"] = [{"src": str(root / "train.src"), "tgt": str(root / "train.tgt")}]
    raw["data"]["valid"] = [{"src": str(root / "valid.src"), "tgt": str(root / "valid.tgt")}]
    raw["data"]["test"] = []
    return raw


@pytest.fixture(scope="module")
def long_data(make_recipe, long_corpus: Path, checkpoint: Path, tmp_path_factory) -> Path:
    """The long reversals, preprocessed with the trained checkpoint's vocabulary."""
    raw = long_recipe(make_recipe, long_corpus, tokenizer={"reuse": str(checkpoint)})
    out = tmp_path_factory.mktemp("long-data") / "data"
    preprocess(config_from_dict(raw), out, show_progress=False)
    return out


def fine_tune(
    make_recipe, long_corpus, data: Path, run: Path, steps: int, on_step=None, **train_values
):
    raw = long_recipe(
        make_recipe,
        long_corpus,
        train={"max_steps": steps, "valid_every": steps, "log_every": 5, **train_values},
    )
    return train(
        config_from_dict(raw), data, run, device="cpu", show_progress=False, on_step=on_step
    )


def test_the_reused_vocabulary_is_the_checkpoints(long_data: Path, checkpoint: Path) -> None:
    manifest = read_manifest(long_data)
    assert manifest["tokenizer"]["reused_from"] == str(checkpoint)
    assert manifest["config"]["tokenizer"]["reuse"] == str(checkpoint)
    stored = load_checkpoint(checkpoint)["tokenizer"]
    assert (long_data / "spm.model").read_bytes() == stored["src_model"]
    # the settings recorded are the ones that made the vocabulary, not the recipe's
    assert manifest["tokenizer"]["model_type"] == "unigram"


def test_a_data_dir_lends_its_vocabulary_too(
    make_recipe, long_corpus: Path, reverse_data: Path, tmp_path: Path
) -> None:
    raw = long_recipe(make_recipe, long_corpus, tokenizer={"reuse": str(reverse_data)})
    preprocess(config_from_dict(raw), tmp_path / "data", show_progress=False)
    assert (tmp_path / "data" / "spm.model").read_bytes() == (
        reverse_data / "spm.model"
    ).read_bytes()


def test_fine_tuning_learns_a_related_task_faster_than_from_scratch(
    make_recipe, long_corpus: Path, long_data: Path, checkpoint: Path, tmp_path: Path
) -> None:
    steps, target = 150, 0.5
    scratch = tmp_path / "scratch"
    tuned = tmp_path / "tuned"
    fine_tune(make_recipe, long_corpus, long_data, scratch, steps)
    result = fine_tune(make_recipe, long_corpus, long_data, tuned, steps, init_from=str(checkpoint))
    assert result.steps == steps

    def first_below(run: Path) -> int:
        return min((s for s, loss in read_losses(run).items() if loss < target), default=10**9)

    assert first_below(tuned) < first_below(scratch) / 2
    assert read_losses(tuned)[5] < read_losses(scratch)[5]  # it starts from what it knows
    written = load_checkpoint(tuned / "last.pt")
    assert written["init_from"]["path"] == str(checkpoint)
    assert written["init_from"]["step"] == load_checkpoint(checkpoint)["step"]
    assert written["config"]["train"]["init_from"] == str(checkpoint)
    assert written["step"] == steps  # a new run: its own step count and schedule
    assert "init_from" not in load_checkpoint(scratch / "last.pt")


def test_the_same_command_continues_and_does_not_start_over(
    make_recipe, long_corpus: Path, long_data: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """Interrupted, the same command goes on from the run's last.pt, not from --init-from."""
    run = tmp_path / "run"

    def interrupt_at_step_5(step: int) -> None:
        if step == 5:
            signal.raise_signal(signal.SIGINT)

    first = fine_tune(
        make_recipe,
        long_corpus,
        long_data,
        run,
        10,
        init_from=str(checkpoint),
        on_step=interrupt_at_step_5,
    )
    assert (first.stopped_by, first.steps) == ("interrupted", 5)
    again = fine_tune(make_recipe, long_corpus, long_data, run, 10, init_from=str(checkpoint))
    assert (again.stopped_by, again.steps) == ("max_steps", 10)
    assert sorted(read_losses(run)) == [5, 10]
    assert "continuing the run" in (run / "train.log").read_text()
    assert load_checkpoint(run / "last.pt")["init_from"]["path"] == str(checkpoint)


def test_frozen_parts_keep_their_weights(
    make_recipe, long_corpus: Path, long_data: Path, checkpoint: Path, tmp_path: Path
) -> None:
    fine_tune(
        make_recipe,
        long_corpus,
        long_data,
        tmp_path / "run",
        10,
        init_from=str(checkpoint),
        freeze=["embeddings", "encoder"],
    )
    before = load_checkpoint(checkpoint)["model_state"]
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model_state"]
    for name, weight in after.items():
        same = torch.equal(weight, before[name])
        # the tied output layer is the target embedding: frozen with it
        assert same == name.startswith(("src_embed.", "tgt_embed.", "output.", "encoder.")), name
    assert "frozen: embeddings, encoder" in (tmp_path / "run" / "train.log").read_text()


def test_kept_optimizer_state_is_the_checkpoints(
    make_recipe, long_corpus: Path, long_data: Path, trained, tmp_path: Path
) -> None:
    """last.pt holds Adam's moments; they carry into the new run's first update."""
    last = trained.run_dir / "last.pt"
    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    common = {"init_from": str(last), "lr": 0.0, "warmup_steps": 0}
    fine_tune(make_recipe, long_corpus, long_data, kept, 1, keep_optimizer=True, **common)
    fine_tune(make_recipe, long_corpus, long_data, fresh, 1, **common)
    stored = load_checkpoint(last)["train_state"]["optimizer"]["state"]
    kept_state = load_checkpoint(kept / "last.pt")["train_state"]["optimizer"]["state"]
    fresh_state = load_checkpoint(fresh / "last.pt")["train_state"]["optimizer"]["state"]
    assert kept_state[0]["step"] == stored[0]["step"] + 1
    assert fresh_state[0]["step"] == 1


def test_keep_optimizer_needs_a_training_state(
    make_recipe, long_corpus: Path, long_data: Path, tmp_path: Path, trained
) -> None:
    from nmt_cli.average import average_checkpoints

    averaged = average_checkpoints(sorted(trained.run_dir.glob("step-*.pt")), tmp_path / "a.pt")
    with pytest.raises(Exception, match="holds no optimizer state .* drop train.keep_optimizer"):
        fine_tune(
            make_recipe,
            long_corpus,
            long_data,
            tmp_path / "run",
            2,
            init_from=str(averaged),
            keep_optimizer=True,
        )


def test_another_vocabulary_is_refused(
    make_recipe, long_corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    own = tmp_path / "own-vocabulary"
    preprocess(config_from_dict(long_recipe(make_recipe, long_corpus)), own, show_progress=False)
    with pytest.raises(ConfigError, match=r"another source vocabulary .* tokenizer.reuse: "):
        fine_tune(make_recipe, long_corpus, own, tmp_path / "run", 2, init_from=str(checkpoint))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_another_architecture_is_refused_naming_the_difference(
    make_recipe, long_corpus: Path, long_data: Path, checkpoint: Path, tmp_path: Path
) -> None:
    raw = long_recipe(
        make_recipe,
        long_corpus,
        model={"hidden_dim": 32, "dropout": 0.3},  # dropout may change, the width not
        train={"max_steps": 2, "init_from": str(checkpoint)},
    )
    with pytest.raises(ConfigError, match=r"model.hidden_dim: 64 in the checkpoint, 32 in the"):
        train(config_from_dict(raw), long_data, tmp_path / "run", device="cpu", show_progress=False)


def test_the_ntm_has_no_encoder_to_freeze(
    make_recipe, long_data: Path, long_corpus: Path, tmp_path: Path
) -> None:
    raw = long_recipe(make_recipe, long_corpus, train={"max_steps": 2, "freeze": ["encoder"]})
    raw["model"] = {"type": "ntm", "emb_dim": 8, "controller_dim": 16, "memory_slots": 8}
    with pytest.raises(ConfigError, match="a ntm model has no encoder; freeze one of embeddings"):
        train(config_from_dict(raw), long_data, tmp_path / "run", device="cpu", show_progress=False)


def test_cli_options_are_the_recipe_keys(
    run_nmt, recipe_file, make_recipe, long_corpus, long_data, checkpoint, tmp_path
) -> None:
    raw = long_recipe(make_recipe, long_corpus, train={"max_steps": 2, "valid_every": 2})
    common = ["train", str(recipe_file(raw)), "--data", str(long_data), "--device", "cpu"]
    done = run_nmt(
        [*common, "--out", str(tmp_path / "run"), "--init-from", str(checkpoint)]
        + ["--freeze", "embeddings", "--seed", "7", "--json"]
    )
    assert done.returncode == 0, done.stderr
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]
    assert config["init_from"] == str(checkpoint)
    assert (config["freeze"], config["seed"]) == (["embeddings"], 7)
    alone = run_nmt([*common, "--out", str(tmp_path / "other"), "--keep-optimizer"])
    assert alone.returncode == 1
    assert "train.keep_optimizer takes the optimizer state of train.init_from" in alone.stderr


def test_a_missing_vocabulary_source_is_one_line_before_any_work(
    make_recipe, long_corpus: Path, recipe_file, run_nmt, tmp_path: Path
) -> None:
    missing = tmp_path / "runs" / "nope.pt"
    raw = long_recipe(make_recipe, long_corpus, tokenizer={"reuse": str(missing)})
    done = run_nmt(["preprocess", str(recipe_file(raw)), "--out", str(tmp_path / "data")])
    assert done.returncode == 1
    assert f"error: tokenizer.reuse: checkpoint not found: {missing}" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data").exists()
