"""Data-parallel training with torch.distributed (gloo, two CPU processes, via torchrun).

Two processes each taking one batch per update must train exactly like one process that
accumulates the same two batches: same global batch, same per-token normalisation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Completed
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


# --- a process that dies, hangs or is interrupted ------------------------------------------


class LongDDPRun:
    """`nmt train --nproc 2` far from its end, in its own process group (as a terminal's job)."""

    def __init__(self, recipe: Path, data: Path, out: Path, *extra: str) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nmt_cli.cli", "train", str(recipe), "--data", str(data),
             "--out", str(out), "--device", "cpu", "--nproc", "2", "--set",
             "train.max_steps=100000", "--set", "train.valid_every=50", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    def wait_for_checkpoint(self) -> None:
        deadline = time.monotonic() + WAIT
        while not (self.out / "last.pt").exists():
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.2)

    def rank_pid(self, rank: int) -> int:
        """The training process of `rank`: a child of the launcher with RANK=rank."""
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(row.split(":\t", 1) for row in status.read_text().splitlines())
                environ = (status.parent / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue  # exited meanwhile, or not ours to read
            if int(fields["PPid"]) == self.proc.pid and f"RANK={rank}".encode() in environ:
                return int(status.parent.name)
        raise AssertionError(f"no process of rank {rank}")

    def finish(self) -> Completed:
        try:
            stdout, stderr = self.proc.communicate(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return Completed(self.proc.returncode, stdout.decode(), stderr.decode())


WAIT = 180  # seconds; generous for a loaded CI machine


def _assert_resumable(run_nmt, recipe: Path, data: Path, out: Path) -> None:
    """last.pt loads, and a two-process run resumes from it for a few more updates."""
    step = load_checkpoint(out / "last.pt")["step"]
    _train(run_nmt, recipe, data, out, "--nproc", "2", "--resume", str(out / "last.pt"),
           "--set", f"train.max_steps={step + 5}")  # fmt: skip
    assert load_checkpoint(out / "last.pt")["step"] == step + 5


def _error_lines(done: Completed) -> list[str]:
    """The `error:` lines of a run that failed without a traceback."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_a_killed_process_stops_the_others_with_one_line_errors(
    runs, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    run = LongDDPRun(runs["ddp_recipe"], reverse_data, tmp_path / "run")
    run.wait_for_checkpoint()
    os.kill(run.rank_pid(1), signal.SIGKILL)
    done = run.finish()
    errors = _error_lines(done)
    assert len(errors) == 2, done.stderr[-3000:]
    assert errors[0].startswith("error: training process 0 lost contact with the others")
    assert errors[1].startswith("error: training process 1 was killed (SIGKILL)")
    assert f"--resume {tmp_path / 'run' / 'last.pt'}" in errors[1]
    _assert_resumable(run_nmt, runs["ddp_recipe"], reverse_data, tmp_path / "run")


def test_a_hung_process_times_out_instead_of_hanging(
    runs, reverse_data: Path, tmp_path: Path
) -> None:
    run = LongDDPRun(runs["ddp_recipe"], reverse_data, tmp_path / "run",
                     "--set", "train.collective_timeout=5")  # fmt: skip
    run.wait_for_checkpoint()
    os.kill(run.rank_pid(1), signal.SIGSTOP)  # alive, but answers nothing
    errors = _error_lines(run.finish())
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: training process 0 lost contact with the others")
    assert "Timed out" in errors[0] and "train.collective_timeout" in errors[0]
    load_checkpoint(tmp_path / "run" / "last.pt")


def test_ctrl_c_stops_every_process_with_a_checkpoint(
    runs, reverse_data: Path, tmp_path: Path, run_nmt
) -> None:
    run = LongDDPRun(runs["ddp_recipe"], reverse_data, tmp_path / "run")
    run.wait_for_checkpoint()
    (tmp_path / "run" / "last.pt").unlink()  # the one written at Ctrl-C must appear
    os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    done = run.finish()
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "error:" not in done.stderr
    assert "continue with --resume" in done.stderr
    _assert_resumable(run_nmt, runs["ddp_recipe"], reverse_data, tmp_path / "run")
