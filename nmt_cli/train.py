"""A training run: every process agrees where it starts (`run_dir.py`), trains with its
`Trainer` (`trainer.py`) and reports through `RunLog`; data-parallel processes are started by
torchrun (`distributed.py`).

The same command run again continues the run. Ctrl-C, SIGTERM, SIGUSR1 (SLURM's warning
before a time limit) or SIGHUP (a closed terminal) finishes the current update, writes
`last.pt` and returns (`stop_signals.py`); a second signal aborts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmt_cli import distributed
from nmt_cli.config import Config, config_from_dict, config_to_dict, config_to_yaml
from nmt_cli.data.shards import read_manifest
from nmt_cli.distributed import Distributed
from nmt_cli.errors import ConfigError, DistributedError
from nmt_cli.run_dir import agree_on_start, data_identity
from nmt_cli.runlog import RunLog
from nmt_cli.runtime import device_name, resolve_device, seed_everything, set_threads
from nmt_cli.stop_signals import StopSignals
from nmt_cli.trainer import Trainer


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_bleu: float | None
    best_step: int | None
    seconds: float
    stopped_by: str  # max_steps | max_epochs | time_limit | early_stopping | interrupted
    signal: str | None = None  # the signal that interrupted this process, e.g. "SIGUSR1"


STOP_REASONS = {
    "max_steps": "reached train.max_steps",
    "max_epochs": "reached train.max_epochs",
    "time_limit": "reached train.max_seconds",
    "early_stopping": "early stopping (train.patience)",
    "interrupted": "a signal to another training process",
}


def with_data_sections(cfg: Config, manifest: dict[str, Any]) -> Config:
    """`cfg` with the data and tokenizer sections that made the shards it trains on (kept in
    their manifest), so that a checkpoint and config.yaml describe what was really used."""
    made_by = manifest.get("config")
    if not made_by:  # data directories of older versions kept no config
        return cfg
    sections = {"data": made_by["data"], "tokenizer": made_by["tokenizer"]}
    return config_from_dict({**config_to_dict(cfg), **sections})


def banner(trainer: Trainer, start: str) -> list[str]:
    """The run's start-up lines: what a person reading train.log days later needs to know."""
    cfg, dist, device = trainer.cfg, trainer.dist, trainer.device
    t, splits = cfg.train, trainer.manifest["splits"]
    params = sum(p.numel() for p in trainer.model.parameters())
    train_split = splits["train"]
    preset = f" {cfg.model.preset}" if getattr(cfg.model, "preset", None) else ""
    why = (
        "train.bleu_tokenize"
        if t.bleu_tokenize
        else (
            f"sacreBLEU's for target language {cfg.data.tgt_lang}; train.bleu_tokenize sets another"
        )
    )
    return [
        start,
        f"model: {cfg.model.type}{preset}, {params:,} parameters",
        f"devices: {dist.world_size} x {device.type} ({device_name(device)}), precision "
        f"{trainer.precision}, {torch.get_num_threads()} threads per process",
        f"batches: {t.batch_tokens:,} tokens per process x accum_steps {t.accum_steps} x "
        f"{dist.world_size} processes = up to {t.batch_tokens * trainer.batches_per_update:,} "
        "tokens per update",
        f"data: {train_split['pairs']:,} training pairs ({train_split['src_tokens']:,} + "
        f"{train_split['tgt_tokens']:,} subwords), "
        f"{splits.get('valid', {}).get('pairs', 0):,} validation pairs, vocabulary "
        f"{trainer.src_tok.vocab_size:,} / {trainer.tgt_tok.vocab_size:,}",
        f"validation BLEU: sacreBLEU, tokenizer {trainer.bleu.tokenizer.signature()} ({why})",
    ]


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    restart: bool = False,
    device: str = "auto",
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `cfg.model` on the shards in `data_dir`, writing checkpoints to `run_dir`.

    A `run_dir` holding a checkpoint of the same config and data is continued (see
    `run_dir.py`); `restart` moves it aside first, `resume` continues from another checkpoint.
    Under torchrun every process calls this; rank 0 alone reads and writes `run_dir`.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if resume is not None and restart:
        raise ConfigError("--resume continues a run and --restart starts over: give one of them")
    dist = distributed.from_environment()
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed + dist.rank)  # distinct dropout; DDP syncs initial weights
    torch_device = distributed.start(dist, resolve_device(device), cfg.train.collective_timeout)
    try:
        with contextlib.ExitStack() as held:
            manifest = read_manifest(data_dir)
            cfg = with_data_sections(cfg, manifest)
            start = agree_on_start(
                dist,
                cfg,
                data_identity(manifest),
                run_dir,
                held,
                resume=Path(resume) if resume else None,
                restart=restart,
            )
            trainer = Trainer(cfg, data_dir, run_dir, torch_device, dist)
            if start.checkpoint is not None:
                trainer.restore(start.checkpoint, start.path)
            elif start.init is not None:
                trainer.initialise(start.init, start.init_path)
            note, start = start.note, None  # the checkpoint's tensors are in the model now
            started = time.perf_counter()
            log = RunLog(
                run_dir,
                enabled=dist.is_main,
                tensorboard=cfg.train.tensorboard,
                show_progress=show_progress,
                total_steps=trainer.planned_steps(),
                start_step=trainer.step,
                config_yaml=config_to_yaml(cfg),
            )
            held.enter_context(log)
            for line in [*banner(trainer, note), *trainer.notes]:
                log.say(line)
            with StopSignals(then_ignore=dist.enabled) as interrupt:
                stopped_by = trainer.run(
                    interrupt,
                    lambda entry: log.record(trainer.step, {**entry, "epoch": trainer.epoch + 1}),
                    on_step,
                )
                if dist.is_main and (stopped_by == "interrupted" or not trainer.validates):
                    trainer.save(run_dir / "last.pt", {})
            log.say(f"stopped at step {trainer.step}: {interrupt.name or STOP_REASONS[stopped_by]}")
            # Leave together: a process that exits while another still writes its checkpoint
            # closes the connections the other's process group is using.
            dist.barrier()
        result = TrainResult(
            run_dir,
            trainer.step,
            trainer.best_bleu,
            trainer.best_step,
            time.perf_counter() - started,
            stopped_by,
            interrupt.name,
        )
        if dist.enabled:
            # The DDP module refers to the process group (through reference cycles): free
            # both now. Freed at interpreter exit instead, gloo's threads can no longer take
            # the GIL and the process aborts (SIGABRT) after a successful run.
            trainer = None
            gc.collect()
        return result
    except Exception as exc:
        if dist.enabled and distributed.is_collective_failure(exc):
            raise _lost_contact(dist, run_dir, exc) from None
        raise
    finally:
        distributed.stop(dist)


def _lost_contact(dist: Distributed, run_dir: Path, exc: Exception) -> DistributedError:
    """The one-line error of a process whose peer died (or hung past the collective timeout).
    Only rank 0 knows the run directory: another machine may not have it at all."""
    advice = (
        distributed.resume_advice(run_dir)
        if dist.is_main
        else "run the same command again to continue from the run's last checkpoint"
    )
    return DistributedError(
        f"training process {dist.rank} lost contact with the others "
        f"({distributed.collective_failure_reason(exc)}): one of them died or hung (see its "
        f"log, or raise train.collective_timeout); {advice}"
    )
