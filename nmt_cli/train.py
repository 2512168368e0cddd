"""Training: token-budget batches, Adam with warm-up and decay, label smoothing, gradient
clipping, periodic validation (loss and sacreBLEU), checkpoints, early stopping, resume.

A run directory holds `last.pt` (everything needed to resume), `best.pt` (best validation
BLEU, weights only), the last K `step-N.pt` and `metrics.jsonl`. Resuming restores the
optimizer, the data position, the RNG and the early-stopping counters, so a resumed run
continues exactly where the interrupted one stopped. Ctrl-C finishes the current update,
writes `last.pt` and returns; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sacrebleu
import torch
import torch.nn.functional as F
from rich.progress import TextColumn

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint, tokenizer_entry
from nmt_cli.config import Config, config_from_dict, config_to_dict
from nmt_cli.console import console, progress
from nmt_cli.data.batching import collate, make_batches
from nmt_cli.data.shards import ShardReader, read_manifest
from nmt_cli.data.tokenizer import PAD, load_tokenizers
from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.models import build_model
from nmt_cli.runtime import (
    autocast,
    precision_warning,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_threads,
)
from nmt_cli.translate import Translator


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_bleu: float | None
    best_step: int | None
    seconds: float
    stopped_by: str  # max_steps | early_stopping | interrupted


def learning_rate(cfg_train: Any, step: int) -> float:
    """Linear warm-up to `lr`, then inverse-sqrt, linear-to-zero or constant (step is 1-based)."""
    t = cfg_train
    if t.warmup_steps and step <= t.warmup_steps:
        return t.lr * step / t.warmup_steps
    if t.decay == "inverse_sqrt":
        return t.lr * math.sqrt(max(t.warmup_steps, 1) / step)
    if t.decay == "linear":
        remaining = max(t.max_steps - step, 0) / max(t.max_steps - t.warmup_steps, 1)
        return t.lr * remaining
    return t.lr


class _InterruptFlag:
    """First Ctrl-C asks the loop to stop at the next update boundary; a second aborts."""

    def __init__(self) -> None:
        self.raised = False

    def __enter__(self) -> _InterruptFlag:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


class Trainer:
    def __init__(self, cfg: Config, data_dir: Path, run_dir: Path, device: torch.device) -> None:
        self.cfg, self.data_dir, self.run_dir, self.device = cfg, data_dir, run_dir, device
        self.precision = resolve_precision(cfg.train.precision, device)
        if warning := precision_warning(self.precision, device):
            console.print(f"[yellow]warning:[/] {warning}")
        manifest = read_manifest(data_dir)
        tok = manifest["tokenizer"]
        self.src_tok, self.tgt_tok = load_tokenizers(data_dir)
        self.tokenizer = tokenizer_entry(
            self.src_tok.model_bytes, self.tgt_tok.model_bytes, tok["joint"]
        )
        self.train_data = ShardReader(data_dir, "train")
        has_valid = manifest["splits"].get("valid", {}).get("pairs", 0) > 0
        self.valid_data = ShardReader(data_dir, "valid") if has_valid else None
        self.langs = (manifest["src_lang"], manifest["tgt_lang"])
        self.model = build_model(
            cfg.model, self.src_tok.vocab_size, self.tgt_tok.vocab_size, tok["joint"]
        ).to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bleu: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0

    # --- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path, metrics: dict[str, float], with_train_state: bool) -> None:
        train_state = None
        if with_train_state:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "torch_rng": torch.get_rng_state(),
                "best_bleu": self.best_bleu,
                "best_step": self.best_step,
                "bad_validations": self.bad_validations,
            }
        save_checkpoint(
            path,
            config=config_to_dict(self.cfg),
            model_state=self.model.state_dict(),
            tokenizer=self.tokenizer,
            step=self.step,
            metrics=metrics,
            train_state=train_state,
        )

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "train_state" not in ckpt:
            raise CheckpointError(f"{path} holds no training state; resume from RUN/last.pt")
        if config_from_dict(ckpt["config"]).model != self.cfg.model:
            raise ConfigError(
                f"the recipe's model section differs from the one {path} was trained with; "
                "resume with the same recipe"
            )
        if ckpt["tokenizer"]["src_sha256"] != self.tokenizer["src_sha256"]:
            raise ConfigError(f"--data holds a different tokenizer than {path}; use the run's data")
        self.model.load_state_dict(ckpt["model_state"])
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = ckpt["step"]
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.best_bleu, self.best_step = state["best_bleu"], state["best_step"]
        self.bad_validations = state["bad_validations"]

    def _save_step_checkpoint(self, metrics: dict[str, float]) -> None:
        self.save(self.run_dir / f"step-{self.step}.pt", metrics, with_train_state=True)
        steps = sorted(int(p.stem.split("-")[1]) for p in self.run_dir.glob("step-*.pt"))
        for old in steps[: max(len(steps) - self.cfg.train.keep_last, 0)]:
            (self.run_dir / f"step-{old}.pt").unlink(missing_ok=True)

    # --- one update ------------------------------------------------------------------------
    def loss(self, batch, label_smoothing: float) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over real target tokens, and their count."""
        src, src_mask, tgt_in, tgt_out = batch
        with autocast(self.device, self.precision):
            logits = self.model(src, src_mask, tgt_in)  # [B, T, V]
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            tgt_out.flatten(),
            ignore_index=PAD,
            label_smoothing=label_smoothing,
            reduction="sum",
        )
        return loss, int((tgt_out != PAD).sum())

    def update(self, indices) -> tuple[float, int]:
        self.model.train()
        batch = collate([self.train_data.pair(i) for i in indices], self.device)
        lr = learning_rate(self.cfg.train, self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, ntokens = self.loss(batch, self.cfg.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / ntokens).backward()
        if self.cfg.train.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_norm)
        self.optimizer.step()
        return loss.item() / ntokens, ntokens

    # --- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (no smoothing) and sacreBLEU with the run's decoding settings."""
        self.model.eval()
        total, count = 0.0, 0
        reader = self.valid_data
        for indices in make_batches(
            reader.src_lengths, reader.tgt_lengths, self.cfg.train.batch_tokens, seed=0, epoch=0
        ):
            loss, ntokens = self.loss(collate([reader.pair(i) for i in indices], self.device), 0.0)
            total, count = total + float(loss), count + ntokens
        src_lang, tgt_lang = self.langs
        sources = (self.data_dir / f"valid.{src_lang}").read_text(encoding="utf-8").splitlines()
        refs = (self.data_dir / f"valid.{tgt_lang}").read_text(encoding="utf-8").splitlines()
        translator = Translator.from_config(
            self.cfg, self.model, self.src_tok, self.tgt_tok, self.device
        )
        hyps = [t.text for t in translator.translate(sources)]
        bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
        return {"valid_loss": total / max(count, 1), "valid_bleu": bleu}

    def after_validation(self, metrics: dict[str, float]) -> bool:
        """Save checkpoints; return True when early stopping says to stop."""
        bleu = metrics["valid_bleu"]
        if self.best_bleu is None or bleu > self.best_bleu:
            self.best_bleu, self.best_step, self.bad_validations = bleu, self.step, 0
            self.save(self.run_dir / "best.pt", metrics, with_train_state=False)
        else:
            self.bad_validations += 1
        self._save_step_checkpoint(metrics)
        self.save(self.run_dir / "last.pt", metrics, with_train_state=True)
        patience = self.cfg.train.patience
        return patience > 0 and self.bad_validations >= patience

    # --- the loop --------------------------------------------------------------------------
    def run(
        self,
        interrupt: _InterruptFlag,
        record: Callable[[dict[str, float]], None],
        on_step: Callable[[int, float], None] | None = None,
    ) -> str:
        """Update until max_steps, early stopping or Ctrl-C; return which one stopped it."""
        t = self.cfg.train
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < t.max_steps:
            batches = make_batches(self.train_data.src_lengths, self.train_data.tgt_lengths,
                                   t.batch_tokens, seed=t.seed, epoch=self.epoch)  # fmt: skip
            while self.batch_in_epoch < len(batches):
                loss, ntokens = self.update(batches[self.batch_in_epoch])
                self.step += 1
                self.batch_in_epoch += 1
                window_tokens += ntokens
                if on_step is not None:
                    on_step(self.step, loss)
                at_end = self.step == t.max_steps
                if self.step % t.log_every == 0 or at_end:
                    tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    record({"loss": loss, "lr": learning_rate(t, self.step),
                            "tok_per_s": round(tps, 1)})  # fmt: skip
                    window_tokens, window_start = 0, time.perf_counter()
                early_stop = False
                if self.valid_data is not None and (self.step % t.valid_every == 0 or at_end):
                    metrics = self.validate()
                    record(metrics)
                    early_stop = self.after_validation(metrics)
                    window_start = time.perf_counter()
                # Checked after validation: a validation due at this step must not be skipped,
                # or the resumed run (which starts at the next step) would never run it.
                if early_stop:
                    return "early_stopping"
                if interrupt.raised:
                    return "interrupted"
                if at_end:
                    return "max_steps"
            self.epoch += 1
            self.batch_in_epoch = 0
        return "max_steps"


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    device: str = "auto",
    show_progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `cfg.model` on the shards in `data_dir`, writing checkpoints to `run_dir`."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data_dir, run_dir, resolve_device(device))
    if resume is not None:
        trainer.restore(Path(resume))
    started = time.perf_counter()
    bar = progress(
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("lr {task.fields[lr]:.2e}"),
    )
    with (
        _InterruptFlag() as interrupt,
        (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as log,
        bar,
    ):
        task = bar.add_task("train", total=cfg.train.max_steps, completed=trainer.step,
                            loss=0.0, tps=0.0, lr=0.0, visible=show_progress)  # fmt: skip

        def record(entry: dict[str, float]) -> None:
            log.write(json.dumps({"step": trainer.step, **entry}) + "\n")
            log.flush()
            if "loss" in entry:
                bar.update(task, completed=trainer.step, loss=entry["loss"],
                           tps=entry["tok_per_s"], lr=entry["lr"])  # fmt: skip
            else:
                console.log(f"step {trainer.step}: valid loss {entry['valid_loss']:.3f}, "
                            f"BLEU {entry['valid_bleu']:.2f}")  # fmt: skip

        stopped_by = trainer.run(interrupt, record, on_step)
        if stopped_by == "interrupted" or trainer.valid_data is None:
            trainer.save(run_dir / "last.pt", {}, with_train_state=True)
    return TrainResult(run_dir, trainer.step, trainer.best_bleu, trainer.best_step,
                       time.perf_counter() - started, stopped_by)  # fmt: skip
