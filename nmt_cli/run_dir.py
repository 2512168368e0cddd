"""The run directory is the run: one training holds it at a time, and the same command
continues what it holds.

`nmt train RECIPE --data D --out RUN` on a RUN with a checkpoint continues it, as `--resume
RUN/last.pt` would, when the checkpoint's config and data are this command's; otherwise it
refuses, naming what differs, and `--restart` moves the old run aside first. fairseq
continues from checkpoint_last.pt whatever the new command says, and Sockeye refuses an
existing output directory without --overwrite-output; here a scheduler can re-run the same
command any number of times, and nothing of an old run is overwritten or mixed with a new one.

A run holds RUN through `flock` on RUN/.nmt-train.lock. The kernel releases it when the
process dies, so a killed run never blocks the next one, and a second run on the same RUN
is refused before it touches anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nmt_cli.checkpoint import load_checkpoint
from nmt_cli.config import Config, config_to_dict
from nmt_cli.distributed import Distributed
from nmt_cli.errors import CheckpointError, ConfigError, NMTError, RelayedError, show
from nmt_cli.outputs import NOTHING_WRITTEN, prepare_directory, remove_partial_writes, write_error
from nmt_cli.owned_dirs import holds_working_directory

LOCK_NAME = ".nmt-train.lock"

# Settings a continued run may change: they alter the speed, not the arithmetic, of training.
# accum_steps changes with the number of processes; `Trainer` checks their product.
RUNTIME_KEYS = frozenset(
    {
        "train.threads",
        "train.compile",
        "train.collective_timeout",
        "train.tensorboard",
        "train.accum_steps",
    }
)
_SHOWN_DIFFERENCES = 4


@dataclasses.dataclass(frozen=True)
class Start:
    """Where training starts: a checkpoint to continue from (read by rank 0 alone), or none;
    for a new run, the checkpoint whose weights it starts from (`train.init_from`), if any."""

    checkpoint: dict[str, Any] | None
    path: Path | None
    note: str
    init: dict[str, Any] | None = None
    init_path: Path | None = None


@contextlib.contextmanager
def holding(run_dir: Path, *, restart: bool) -> Iterator[Path | None]:
    """Create and lock `run_dir` for this process; with `restart`, first move what it holds
    aside. Yields where the old run went (None when nothing was moved)."""
    prepare_directory(run_dir, "--out")
    lock = _lock(run_dir)
    moved = None
    try:
        if restart and any(entry.name != LOCK_NAME for entry in run_dir.iterdir()):
            moved = _move_aside(run_dir)
            prepare_directory(run_dir, "--out")
            new_lock = _lock(run_dir)
            os.close(lock)
            lock = new_lock
        remove_partial_writes(run_dir)  # a live writer's files stay: they are not ours
        yield moved
    finally:
        os.close(lock)


def _lock(run_dir: Path) -> int:
    """An open descriptor holding the run's lock; refuses when another process holds it."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise write_error(path, exc, NOTHING_WRITTEN) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"{run_dir} is in use by another nmt train (PID {holder}); wait for it to end or "
            "stop it, or train into another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def _move_aside(run_dir: Path) -> Path:
    """`--restart`: rename the whole run to the first free RUN.old-N; nothing is deleted."""
    if holds_working_directory(run_dir):
        raise ConfigError(
            f"--restart would move {run_dir}, which holds the working directory; "
            "run from another directory"
        )
    n = 1
    while os.path.lexists(old := run_dir.with_name(f"{run_dir.name}.old-{n}")):
        n += 1
    try:
        os.rename(run_dir, old)
    except OSError as exc:
        raise write_error(old, exc, "the old run is where it was") from None
    return old


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: last.pt, or else its newest step-N.pt."""
    if (run_dir / "last.pt").is_file():
        return run_dir / "last.pt"
    steps = step_checkpoints(run_dir)
    return steps[max(steps)] if steps else None


def step_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's step-N.pt files, by N."""
    return {int(p.stem[5:]): p for p in run_dir.glob("step-*.pt") if p.stem[5:].isdigit()}


def plan_start(
    run_dir: Path,
    config: dict[str, Any],
    data: dict[str, Any],
    *,
    resume: Path | None,
    restarted_from: Path | None,
) -> Start:
    """Decide what `nmt train` does with `run_dir` (rank 0 alone: only it may see the run).

    `config` is this command's resolved config and `data` the identity of its `--data`
    (`data_identity`); a stored run continues only when both equal the checkpoint's.
    """
    if resume is not None:
        ckpt = _load_resumable(resume)
        return Start(ckpt, resume, f"resuming from {resume} at step {ckpt['step']}")
    if restarted_from is not None:
        note = f"starting over in {run_dir}; the old run is in {restarted_from}"
        return _new_run(note, config)
    found = newest_checkpoint(run_dir)
    if found is None:
        leftovers = sorted(p.name for p in run_dir.glob("*.pt"))
        if leftovers:
            raise ConfigError(
                f"{run_dir} holds {', '.join(leftovers)} of an earlier run but no last.pt or "
                "step-N.pt to continue from; start over with --restart (moves the old run aside)"
            )
        return _new_run(f"starting a new run in {run_dir}", config)
    ckpt = _load_resumable(found)
    differing = config_differences(ckpt["config"], config) + data_differences(ckpt, data)
    if differing:
        shown = "; ".join(differing[:_SHOWN_DIFFERENCES])
        more = len(differing) - _SHOWN_DIFFERENCES
        shown += f"; and {more} more" if more > 0 else ""
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({shown}); continue it with this "
            f"command's settings with --resume {found}, or start over with --restart "
            "(moves the old run aside)"
        )
    return Start(
        ckpt, found, f"continuing the run in {run_dir} from step {ckpt['step']} ({found.name})"
    )


def _new_run(note: str, config: dict[str, Any]) -> Start:
    """A new run, from the weights of `train.init_from` when the config names one."""
    init_from = config["train"]["init_from"]
    if not init_from:
        return Start(None, None, note)
    path = Path(init_from)
    init = load_checkpoint(path)
    note = f"{note}, from the weights of {path} (step {init['step']})"
    return Start(None, None, note, init=init, init_path=path)


def _load_resumable(path: Path) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if "train_state" not in ckpt:
        raise CheckpointError(
            f"{path} holds no training state (an averaged or exported file); resume from a "
            "checkpoint nmt train wrote, e.g. RUN/last.pt or RUN/step-N.pt"
        )
    return ckpt


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: stored -> current` for each leaf that differs, runtime settings aside."""
    old, new = _leaves(stored), _leaves(current)
    return [
        f"{key}: {show(old.get(key))} -> {show(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if key not in RUNTIME_KEYS and old.get(key) != new.get(key)
    ]


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as `{"train.lr": 0.001, ...}` (lists of sections keep their index)."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()
        }
    if isinstance(tree, (list, tuple)) and any(isinstance(item, dict) for item in tree):
        return {
            k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}{i}.").items()
        }
    return {prefix.rstrip("."): list(tree) if isinstance(tree, tuple) else tree}


def data_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two data directories the same training data: their shards' checksums."""
    return {
        split: manifest["splits"][split].get("crc32")
        for split in ("train", "valid")
        if split in manifest["splits"]
    }


def data_differences(ckpt: dict[str, Any], data: dict[str, Any]) -> list[str]:
    stored = ckpt["train_state"].get("data")
    if stored is None or stored == data:  # runs of older versions stored none
        return []
    return [f"--data: other {split} shards" for split in data if stored.get(split) != data[split]]


def agree_on_start(
    dist: Distributed,
    cfg: Config,
    data: dict[str, Any],
    run_dir: Path,
    held: contextlib.ExitStack,
    *,
    resume: Path | None,
    restart: bool,
) -> Start:
    """Rank 0 takes the run directory (held until `held` closes) and decides where training
    of `cfg` on `data` (`data_identity`) starts; every process gets that decision, checkpoint
    included, from rank 0. So no process but rank 0 needs to see `run_dir`: no shared
    filesystem is needed to resume."""
    if dist.is_main:
        try:
            moved = held.enter_context(holding(run_dir, restart=restart))
            start = plan_start(
                run_dir, config_to_dict(cfg), data, resume=resume, restarted_from=moved
            )
        except NMTError as exc:
            dist.broadcast_object(str(exc))
            raise
        dist.broadcast_object(start)
    else:
        start = dist.broadcast_object(None)
        if isinstance(start, str):
            raise RelayedError(start)
    if dist.enabled and start.checkpoint is None and resume is None and not restart:
        seen = dist.all_gather_object(newest_checkpoint(run_dir) is not None)
        if any(seen):  # never on a shared filesystem: rank 0 would have continued the run
            raise ConfigError(
                f"training process {seen.index(True)} sees a checkpoint in {run_dir} but process "
                "0 does not; start rank 0 on the machine that holds the run (torchrun's c10d "
                "rendezvous ranks machines by host name; --rdzv_backend static ranks them by "
                "--node_rank), or share the run directory"
            )
    return start
