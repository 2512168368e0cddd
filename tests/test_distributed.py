"""Data-parallel training with torch.distributed (gloo, two CPU processes, via torchrun).

Two processes each taking one batch per update must train exactly like one process that
accumulates the same two batches: same global batch, same per-token normalisation.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Completed, last_logged_step, nmt_subprocess, wait_for
from test_train import read_metrics

from nmt_cli import distributed
from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import config_from_dict
from nmt_cli.trainer import Trainer

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
    assert names == [".nmt-train.lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                     f"step-{STEPS}.pt", "train.log"]  # fmt: skip
    assert load_checkpoint(runs["two"] / "last.pt")["train_state"]["world_size"] == 2
    assert "devices: 2 x cpu" in (runs["two"] / "train.log").read_text()


def _assert_losses_equal(run: Path, want: Path) -> None:
    """Every step's loss within 1e-3 of `want`'s, which trained without interruption."""
    got, expected = read_metrics(run)[0], read_metrics(want)[0]
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-3), step


def test_a_one_process_run_continues_on_two(runs, reverse_data: Path, tmp_path: Path) -> None:
    """Stopped by SIGTERM, the same command on two processes (accumulating half as much, the
    same global batch) continues the run by itself."""
    run, recipe = tmp_path / "run", runs["ddp_recipe"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt_cli", "train", str(recipe), "--data", str(reverse_data),
         "--out", str(run), "--device", "cpu", "--set", "train.accum_steps=2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(lambda: last_logged_step(run) >= 3, [proc])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT) == 75
    assert load_checkpoint(run / "last.pt")["step"] < STEPS
    done = _train(nmt_subprocess, recipe, reverse_data, run, "--nproc", "2")
    assert "continuing the run in" in done.stderr
    _assert_losses_equal(run, runs["one"])


def test_a_two_process_run_resumes_on_one(runs, reverse_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(nmt_subprocess, runs["ddp_recipe"], reverse_data, run, "--nproc", "2",
           "--set", f"train.max_steps={STEPS // 2}")  # fmt: skip
    _train(nmt_subprocess, runs["ddp_recipe"], reverse_data, run, "--resume",
           str(run / "last.pt"), "--set", "train.accum_steps=2")  # fmt: skip
    _assert_losses_equal(run, runs["two"])


def test_another_global_batch_is_refused(runs, reverse_data: Path, tmp_path: Path, run_nmt) -> None:
    done = run_nmt(["train", str(runs["ddp_recipe"]), "--data", str(reverse_data), "--out",
                    str(tmp_path / "x"), "--device", "cpu", "--resume",
                    str(runs["two"] / "last.pt")])  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "trained with 2 batches per update (2 processes x train.accum_steps 1)" in done.stderr
    assert "set train.accum_steps 2 to keep the global batch" in done.stderr


# --- two machines, as torchrun starts them (here: two "nodes" on localhost) -----------------


class TwoNodes:
    """`torchrun --nnodes 2` twice, as on two machines: each in its own directory, so node 1
    never sees node 0's run directory (no shared filesystem). Node 0 gets rank 0: the
    rendezvous ranks nodes by address, and it has the lower one."""

    def __init__(self, root: Path, recipe: Path, data: Path, *extra: str) -> None:
        port = _free_port()
        self.dirs = [root / "node0", root / "node1"]
        self.procs = []
        for node, cwd in enumerate(self.dirs):
            cwd.mkdir(exist_ok=True)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                 str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", f"127.0.0.1:{port}", "--local-addr", f"127.0.0.{node + 1}",
                 "-m", "nmt_cli", "train", str(recipe), "--data", str(data), "--out", "run",
                 "--device", "cpu", *extra],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
            ))  # fmt: skip

    @property
    def run(self) -> Path:
        return self.dirs[0] / "run"

    def finish(self) -> list[str]:
        """Each node's stderr, once both have exited."""
        try:
            return [p.communicate(timeout=WAIT)[1].decode() for p in self.procs]
        finally:
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_equal_one_process_and_resume_from_rank_zero_alone(
    runs, reverse_data: Path, tmp_path: Path
) -> None:
    """Two nodes stop at step 10, then resume with --resume run/last.pt: node 1 has no such
    file, so rank 0 reads it and sends the state over."""
    first = TwoNodes(tmp_path, runs["ddp_recipe"], reverse_data,
                     "--set", f"train.max_steps={STEPS // 2}")  # fmt: skip
    errors = first.finish()
    assert [p.returncode for p in first.procs] == [0, 0], errors[0][-3000:]
    assert not (first.dirs[1] / "run").exists()
    second = TwoNodes(tmp_path, runs["ddp_recipe"], reverse_data, "--resume", "run/last.pt")
    errors = second.finish()
    assert [p.returncode for p in second.procs] == [0, 0], errors[0][-3000:]
    assert not (second.dirs[1] / "run").exists()
    _assert_losses_equal(second.run, runs["one"])


def test_a_killed_node_is_one_line_on_the_other_and_the_same_command_continues(
    runs, reverse_data: Path, tmp_path: Path
) -> None:
    long_run = ("--set", "train.max_steps=100000", "--set", "train.valid_every=20")
    nodes = TwoNodes(tmp_path, runs["ddp_recipe"], reverse_data, *long_run)
    wait_for(lambda: (nodes.run / "last.pt").exists(), nodes.procs)
    os.kill(_child_of(nodes.procs[1].pid), signal.SIGKILL)  # node 1's training process
    stderr = nodes.finish()[0]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith("error: training process 0 lost contact with the others")
    assert "run the same command again to continue" in errors[0]
    step = load_checkpoint(nodes.run / "last.pt")["step"]

    again = TwoNodes(tmp_path, runs["ddp_recipe"], reverse_data, *long_run)
    wait_for(lambda: last_logged_step(again.run) > step + 2, again.procs)
    for proc in again.procs:  # as a scheduler stops a job: torchrun passes SIGTERM on
        proc.send_signal(signal.SIGTERM)
    again.finish()
    assert load_checkpoint(again.run / "last.pt")["step"] > step + 2
    assert f"continuing the run in run from step {step}" in (again.run / "train.log").read_text()


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is no zombie."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _child_of(pid: int) -> int:
    """The one training process torchrun `pid` started."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


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
    runs, reverse_data: Path, tmp_path: Path
) -> None:
    run = LongDDPRun(runs["ddp_recipe"], reverse_data, tmp_path / "run")
    run.wait_for_checkpoint()
    os.kill(run.rank_pid(1), signal.SIGKILL)
    done = run.finish()
    errors = _error_lines(done)
    assert len(errors) == 2, done.stderr[-3000:]
    assert errors[0].startswith("error: training process 0 lost contact with the others")
    assert errors[1].startswith("error: training process 1 was killed (SIGKILL)")
    assert f"{tmp_path / 'run' / 'last.pt'} is intact: run the same command again" in errors[1]
    load_checkpoint(tmp_path / "run" / "last.pt")  # resuming after a kill: the two-node test


def test_a_hung_process_times_out_instead_of_hanging(
    runs, reverse_data: Path, tmp_path: Path
) -> None:
    run = LongDDPRun(runs["ddp_recipe"], reverse_data, tmp_path / "run",
                     "--set", "train.collective_timeout=5")  # fmt: skip
    run.wait_for_checkpoint()
    rank0, rank1 = run.rank_pid(0), run.rank_pid(1)
    os.kill(rank1, signal.SIGSTOP)  # alive, but answers nothing
    wait_for(lambda: not _running(rank0), [run.proc])  # it gave up on the hung one
    os.kill(rank1, signal.SIGKILL)  # what the launcher does after 30 s of grace
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
    assert "stopped by SIGINT: saved" in done.stderr
    assert "run the same command again to continue" in done.stderr
    _assert_resumable(run_nmt, runs["ddp_recipe"], reverse_data, tmp_path / "run")


# --- validation split across processes ----------------------------------------------------


def _validate(rank: int, world: int, port: int, checkpoint: Path, data: Path, out: Path) -> None:
    """One process of a `world`-process validation of `checkpoint` (torch.multiprocessing
    starts it; with world 1, this process, whose environment stays untouched)."""
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        torch.set_num_threads(1)
    dist = distributed.from_environment()
    distributed.start(dist, torch.device("cpu"), 120)
    ckpt = load_checkpoint(checkpoint)
    trainer = Trainer(config_from_dict(ckpt["config"]), data, out.parent, torch.device("cpu"),
                      dist)  # fmt: skip
    trainer.model.load_state_dict(ckpt["model_state"])
    metrics = trainer.validate()
    if dist.is_main:
        out.write_text(json.dumps(metrics))
    # Free the DDP module and its process group now, as `nmt_cli.train` does: left to the
    # interpreter's exit, the group's destructor can wait forever for gloo's threads.
    trainer = None
    gc.collect()
    distributed.stop(dist)


def test_validation_on_two_processes_gives_one_process_bleu(
    checkpoint: Path, reverse_data: Path, tmp_path: Path
) -> None:
    """Each process translates every other sentence; rank 0 gathers them in order."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _validate(0, 1, 0, checkpoint, reverse_data, one)
    torch.multiprocessing.spawn(_validate, args=(2, _free_port(), checkpoint, reverse_data, two),
                                nprocs=2)  # fmt: skip
    single, split = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["valid_bleu"] > 50  # a model that translates: the comparison means something
    assert split["valid_bleu"] == single["valid_bleu"]
    assert split["valid_loss"] == pytest.approx(single["valid_loss"], rel=1e-6)
