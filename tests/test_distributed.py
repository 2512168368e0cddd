"""Data-parallel training with torch.distributed (gloo, two CPU processes, via torchrun).

Two processes each taking one batch per update must train exactly like one process that
accumulates the same two batches: same global batch, same per-token normalisation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import read_metrics

from nmt_cli.checkpoint import load_checkpoint

STEPS = 20


def _train(run_nmt, recipe: Path, data: Path, out: Path, *extra: str):
    done = run_nmt(["train", str(recipe), "--data", str(data), "--out", str(out),
                    "--device", "cpu", "--json", *extra], timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # the tail: where a rank's error is
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_recipe, reverse_data: Path, run_nmt) -> dict[str, Path]:
    """One process accumulating 2 batches, and 2 processes with one batch each."""
    root = tmp_path_factory.mktemp("ddp")
    write = lambda raw, name: (root / name).write_text(__import__("yaml").safe_dump(raw))  # noqa: E731
    write(make_recipe(train={"max_steps": STEPS, "log_every": 1, "valid_every": 1000,
                             "batch_tokens": 200, "accum_steps": 2}), "accum.yaml")  # fmt: skip
    write(make_recipe(train={"max_steps": STEPS, "log_every": 1, "valid_every": 1000,
                             "batch_tokens": 200}), "ddp.yaml")  # fmt: skip
    one, two = root / "one", root / "two"
    _train(run_nmt, root / "accum.yaml", reverse_data, one)
    done = _train(run_nmt, root / "ddp.yaml", reverse_data, two, "--nproc", "2")
    assert done.stdout.count('"stopped_by"') == 1  # rank 0 alone reports
    return {"one": one, "two": two, "ddp_recipe": root / "ddp.yaml"}


def test_two_processes_equal_one_with_the_same_global_batch(runs) -> None:
    one, _ = read_metrics(runs["one"])
    two, _ = read_metrics(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(two[step] - one[step]) <= 1e-3 * abs(one[step]), step
    assert two[STEPS] < two[1]  # and it learns


def test_only_rank_zero_writes_the_run_directory(runs) -> None:
    names = sorted(p.name for p in runs["two"].iterdir())
    assert names == ["best.pt", "last.pt", "metrics.jsonl", f"step-{STEPS}.pt"]
    assert load_checkpoint(runs["two"] / "last.pt")["train_state"]["world_size"] == 2


def test_distributed_resume_continues_exactly(
    runs, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    half = tmp_path / "half"
    recipe = runs["ddp_recipe"]
    _train(run_nmt, recipe, reverse_data, half, "--nproc", "2", "--set",
           f"train.max_steps={STEPS // 2}")  # fmt: skip
    _train(run_nmt, recipe, reverse_data, half, "--nproc", "2", "--resume",
           str(half / "last.pt"))  # fmt: skip
    want, _ = read_metrics(runs["two"])
    got, _ = read_metrics(half)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(STEPS // 2 + 1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-6), step


def test_resume_with_another_process_count_is_refused(
    runs, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    done = run_nmt(["train", str(runs["ddp_recipe"]), "--data", str(reverse_data), "--out",
                    str(tmp_path / "x"), "--device", "cpu", "--resume",
                    str(runs["two"] / "last.pt")])  # fmt: skip
    assert done.returncode == 1
    assert "written by 2 training processes" in done.stderr and "--nproc 2" in done.stderr
    assert "Traceback" not in done.stderr
