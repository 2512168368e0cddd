"""One training process: its model replica, optimizer, data position and checkpoints.

The arithmetic of one update (accumulation, mixed precision, clipping, the non-finite
guard) lives in `update.py`; `train.py` runs a whole training with a `Trainer` per process.

Checkpoints: every validation writes one file, `step-N.pt`, with everything needed to resume
(the optimizer, the data position, the RNG, the early-stopping counters); `last.pt` and
`best.pt` (best validation BLEU, or loss with `train.best_metric: loss`) are hard links to
one of them, and only the last `keep_last` step files are kept.

The data position is a position in the epoch's global sequence of batches: an update takes
the next `accum_steps x processes` of them, each process every world_size-th. A run may so
resume on another number of processes as long as that product, the global batch, is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from nmt_cli.checkpoint import save_checkpoint, tokenizer_entry
from nmt_cli.checkpoint_checks import check_train_state, check_weights_fit
from nmt_cli.config import Config, config_from_dict, config_to_dict
from nmt_cli.data.batching import collate_padded, plan_batches, too_long
from nmt_cli.data.shards import ShardReader, load_tokenizers, read_manifest
from nmt_cli.distributed import SINGLE_PROCESS, Distributed
from nmt_cli.errors import CheckpointError, ConfigError, TrainingError
from nmt_cli.evaluate import validation_bleu
from nmt_cli.finetune import check_compatible, freeze, optimizer_state, origin
from nmt_cli.inference.torch_engine import TorchEngine
from nmt_cli.inference.translator import Translator
from nmt_cli.loss import TokenLoss
from nmt_cli.models import build_model
from nmt_cli.outputs import link_output
from nmt_cli.run_dir import data_identity, step_checkpoints
from nmt_cli.runtime import precision_warning, resolve_precision
from nmt_cli.stop_signals import StopSignals
from nmt_cli.update import DIVERGED, Updater

# What loading a foreign or damaged optimizer, updater or RNG state raises.
UNREADABLE_STATE = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


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


class Trainer:
    """One training process: its model replica, optimizer, data position and checkpoints."""

    def __init__(
        self,
        cfg: Config,
        data_dir: Path,
        run_dir: Path,
        device: torch.device,
        dist: Distributed = SINGLE_PROCESS,
    ) -> None:
        self.cfg, self.data_dir, self.run_dir, self.device = cfg, data_dir, run_dir, device
        self.dist = dist
        self.notes: list[str] = []  # for the run's log: the library itself prints nothing
        lstm = cfg.model.type == "rnn"
        self.precision = resolve_precision(cfg.train.precision, device, lstm=lstm)
        if warning := precision_warning(self.precision, device):
            self.notes.append(f"warning: {warning}")
        self.manifest = read_manifest(data_dir)
        tok = self.manifest["tokenizer"]
        self.src_tok, self.tgt_tok = load_tokenizers(data_dir)
        self.tokenizer = tokenizer_entry(
            self.src_tok.model_bytes, self.tgt_tok.model_bytes, tok["joint"]
        )
        self.train_data = ShardReader(data_dir, "train")
        self._report_too_long(self.train_data)
        has_valid = self.manifest["splits"].get("valid", {}).get("pairs", 0) > 0
        self.validates = has_valid and cfg.train.valid_every > 0
        self.valid_data = ShardReader(data_dir, "valid") if self.validates else None
        self.valid_batches: list[np.ndarray] = []  # cut once: every validation scores the same
        if self.valid_data is not None:
            lengths = (self.valid_data.src_lengths, self.valid_data.tgt_lengths)
            self.valid_batches, _ = plan_batches(*lengths, cfg.train.batch_tokens).epoch(0, 0)
        self.langs = (self.manifest["src_lang"], self.manifest["tgt_lang"])
        self.bleu = validation_bleu(cfg.train.bleu_tokenize, self.langs[1])
        if self.valid_data is not None:  # on every process: all must stop, not only rank 0
            valid_text = data_dir / f"valid.{self.langs[0]}"
            check_valid_lengths(self.valid_data, cfg.model.max_len, valid_text)
        self.model = build_model(
            cfg.model, self.src_tok.vocab_size, self.tgt_tok.vocab_size, tok["joint"]
        ).to(device)
        t = cfg.train
        if t.freeze:
            frozen = freeze(self.model, cfg.model.type, t.freeze)
            self.notes.append(f"frozen: {', '.join(t.freeze)} ({frozen:,} weights)")
        # fused: one kernel for all parameters (CPU 3.8 against 12.7 ms per update for the
        # Transformer-small, 2 cores), the same update up to rounding; decoupled weight
        # decay makes it AdamW, which with train.weight_decay 0 is Adam
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=t.lr,
            betas=t.betas,
            weight_decay=t.weight_decay,
            decoupled_weight_decay=True,
            fused=True,
        )
        self.init_from: dict[str, Any] | None = None  # the checkpoint a fine-tuning began from
        self.plan = plan_batches(
            self.train_data.src_lengths,
            self.train_data.tgt_lengths,
            t.batch_tokens,
            max_len=cfg.model.max_len,
            static_shapes=t.static_shapes,
        )
        self.updater = Updater(
            self._training_module(),
            self.optimizer,
            device=device,
            precision=self.precision,
            clip_norm=cfg.train.clip_norm,
            max_bad_updates=cfg.train.max_bad_updates,
            dist=dist,
        )
        self.valid_loss = TokenLoss(
            self.model, label_smoothing=0.0, device=device, precision=self.precision
        )
        self.batches_per_update = cfg.train.accum_steps * dist.world_size  # the global batch
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # global batches of this epoch already used, by all processes
        self.best_score: float | None = None  # larger is better (see `_score`)
        self.best_bleu: float | None = None  # validation BLEU of best.pt
        self.best_step: int | None = None
        self.bad_validations = 0
        self.epoch_batches()  # refuses a global batch that no epoch can fill

    def planned_steps(self) -> int:
        """The updates this run will make: train.max_steps, or fewer where train.max_epochs
        ends it first."""
        t = self.cfg.train
        if not t.max_epochs:
            return t.max_steps
        per_epoch = len(self.epoch_batches()) // self.batches_per_update
        return min(t.max_steps, t.max_epochs * per_epoch)

    def epoch_batches(self) -> np.ndarray:
        """The current epoch's global sequence of batches, as many as make whole updates:
        numbers of `self.batches`, the plan's batches as this epoch deals them.

        Every process computes the same sequence (a pure function of seed and epoch) and
        takes its share of each update from it. `__init__` calls this once to refuse, before
        anything is written, a global batch no epoch can fill (the loop would go round epochs
        forever).
        """
        t = self.cfg.train
        self.batches, order = self.plan.epoch(t.seed, self.epoch)
        usable = len(order) - len(order) % self.batches_per_update
        if usable == 0:
            raise ConfigError(
                f"an update takes train.accum_steps {t.accum_steps} x {self.dist.world_size} "
                f"processes = {self.batches_per_update} batches, but an epoch gives only "
                f"{len(order)} batches of train.batch_tokens {t.batch_tokens}; lower "
                "accum_steps or batch_tokens"
            )
        return order[:usable]

    def _report_too_long(self, reader: ShardReader) -> None:
        """Training pairs longer than model.max_len are skipped (see `plan_batches`)."""
        max_len = self.cfg.model.max_len
        skipped = int(too_long(reader.src_lengths, reader.tgt_lengths, max_len).sum())
        if skipped == len(reader):
            raise ConfigError(
                f"all {skipped} training pairs are longer than model.max_len {max_len} "
                "subwords; raise model.max_len"
            )
        if skipped:
            self.notes.append(
                f"skipping {skipped} of {len(reader)} training pairs longer than model.max_len "
                f"{max_len} subwords (source or target)"
            )

    def _training_module(self) -> torch.nn.Module:
        """The model and its loss as an update runs them: wrapped by DDP, then compiled, if
        asked. With static shapes each batch shape is compiled once (`dynamic=False`), up to
        two per bucket width; else once for shapes that vary (`dynamic=True`)."""
        t = self.cfg.train
        module: torch.nn.Module = TokenLoss(
            self.model,
            label_smoothing=t.label_smoothing,
            device=self.device,
            precision=self.precision,
        )
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        if t.compile:
            if t.static_shapes:  # torch gives up compiling after 8 shapes of one function
                limit, shapes = torch._dynamo.config.recompile_limit, len(self.plan.shapes())
                torch._dynamo.config.recompile_limit = max(limit, shapes)
            module = torch.compile(module, dynamic=not t.static_shapes)
        return module

    # --- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path, metrics: dict[str, float], with_train_state: bool = True) -> None:
        """One serialisation of the run; a hard-linked `path` gets a new inode (never new
        contents: last.pt and best.pt may be links of a step-N.pt)."""
        train_state = None
        if with_train_state:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "updater": self.updater.state_dict(),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "batches_per_update": self.batches_per_update,
                "world_size": self.dist.world_size,
                "data": data_identity(self.manifest),
                "torch_rng": torch.get_rng_state(),
                "best_score": self.best_score,
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
            init_from=self.init_from,
        )

    def initialise(self, ckpt: dict[str, Any], path: Path) -> None:
        """Start a new run from checkpoint `ckpt`'s weights (fine-tuning, see finetune.py):
        the optimizer, schedule and data position start afresh, unless train.keep_optimizer
        takes its optimizer state too."""
        check_compatible(path, ckpt, self.cfg, self.tokenizer)
        check_weights_fit(path, self.model, ckpt["model_state"])
        self.model.load_state_dict(ckpt["model_state"])
        if self.cfg.train.keep_optimizer:
            try:
                self.optimizer.load_state_dict(optimizer_state(path, ckpt))
            except UNREADABLE_STATE:
                raise CheckpointError(
                    f"--init-from {path}: its optimizer state is unreadable; drop "
                    "train.keep_optimizer, or start from another of its run's checkpoints"
                ) from None
            self._set_weight_decay()
        self.init_from = origin(path, ckpt)

    def _set_weight_decay(self) -> None:
        """A loaded optimizer state carries its run's weight decay: this run's applies (the
        learning rate is set before each update)."""
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.cfg.train.weight_decay
            group["decoupled_weight_decay"] = True

    def restore(self, ckpt: dict[str, Any], path: Path) -> None:
        """Continue from checkpoint `ckpt` (read from `path` by rank 0, sent to all; its
        training state is known to be there, see `run_dir.plan_start`)."""
        stored = config_from_dict(ckpt["config"])
        if stored.model != self.cfg.model:
            raise ConfigError(
                f"the recipe's model section differs from the one {path} was trained with; "
                "resume with the same recipe"
            )
        if ckpt["tokenizer"]["src_sha256"] != self.tokenizer["src_sha256"]:
            raise ConfigError(f"--data holds a different tokenizer than {path}; use the run's data")
        state = ckpt["train_state"]
        check_train_state(path, state)
        self._check_global_batch(path, state, stored.train.accum_steps)
        check_weights_fit(path, self.model, ckpt["model_state"])
        self.model.load_state_dict(ckpt["model_state"])
        try:  # their contents are torch's and the updater's; a wrong one fails here, not later
            self.optimizer.load_state_dict(state["optimizer"])
            if "updater" in state:
                self.updater.load_state_dict(state["updater"])
            if self.dist.is_main:
                torch.set_rng_state(state["torch_rng"])
        except UNREADABLE_STATE:
            raise CheckpointError(
                f"{path}: its optimizer, updater or RNG state is unreadable; resume from "
                "another of the run's checkpoints, e.g. a step-N.pt"
            ) from None
        self._set_weight_decay()
        self.init_from = ckpt.get("init_from")
        self.step = ckpt["step"]
        if not self.dist.is_main:  # only rank 0's RNG is saved; the others get a distinct one
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * self.dist.rank + self.step)
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        if "batches_per_update" not in state:  # older runs counted each process's batches
            self.batch_in_epoch *= state.get("world_size", 1)
        self.best_bleu, self.best_step = state["best_bleu"], state["best_step"]
        self.best_score = state.get("best_score", self.best_bleu)  # older runs ranked by BLEU
        self.bad_validations = state["bad_validations"]

    def _check_global_batch(self, path: Path, state: dict[str, Any], stored_accum: int) -> None:
        """The data position counts global batches, so a run may go on with any number of
        processes that keeps the batches per update (processes x accum_steps)."""
        saved_world = max(state.get("world_size", 1), 1)
        saved = state.get("batches_per_update", saved_world * stored_accum)
        if saved == self.batches_per_update:
            return
        world = self.dist.world_size
        fix = (
            f"set train.accum_steps {saved // world}"
            if saved % world == 0
            else f"run a number of processes that divides {saved}"
        )
        raise ConfigError(
            f"{path} was trained with {saved} batches per update ({saved_world} processes x "
            f"train.accum_steps {saved // saved_world}) and this run makes "
            f"{self.batches_per_update} ({world} x {self.cfg.train.accum_steps}); {fix} to "
            "keep the global batch"
        )

    def write_checkpoints(self, metrics: dict[str, float], improved: bool) -> None:
        """One serialisation per validation: step-N.pt, with last.pt (and best.pt, when
        `improved`) as hard links to it; then the oldest step-N.pt beyond keep_last go."""
        keep = self.cfg.train.keep_last
        written = self.run_dir / (f"step-{self.step}.pt" if keep else "last.pt")
        self.save(written, metrics)
        if keep:
            link_output(written, self.run_dir / "last.pt")
        if improved:
            link_output(written, self.run_dir / "best.pt")
        steps = step_checkpoints(self.run_dir)
        for old in sorted(steps)[: max(len(steps) - keep, 0)]:
            steps[old].unlink(missing_ok=True)

    # --- one update ------------------------------------------------------------------------
    def update(self, global_batch: Sequence[int]) -> int:
        """One optimizer update over the global batch (numbers in `self.plan`), of which this
        process takes every world_size-th; returns the update's target tokens (with EOS)."""
        self.model.train()
        pairs, rank, world = self.batches, self.dist.rank, self.dist.world_size
        tokens = sum(
            int(self.train_data.tgt_lengths[pairs[b]].sum()) + len(pairs[b]) for b in global_batch
        )
        batches = [
            collate_stored(self.train_data, pairs[b], self.device, int(self.plan.widths[b]))
            for b in global_batch[rank::world]
        ]
        self.updater(batches, learning_rate(self.cfg.train, self.step + 1), tokens)
        return tokens

    # --- validation (every process takes a share) ------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (no smoothing) and sacreBLEU with the run's decoding settings.

        Each process scores every world_size-th batch and translates every world_size-th
        sentence; rank 0 gathers the translations in order, so BLEU is the one a single
        process computes. On the other processes valid_bleu is NaN.
        """
        self.model.eval()
        rank, world = self.dist.rank, self.dist.world_size
        reader = self.valid_data
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for indices in self.valid_batches[rank::world]:
            loss = self.valid_loss(*collate_stored(reader, indices, self.device))
            ntokens = float(reader.tgt_lengths[indices].sum() + len(indices))
            totals += torch.stack([loss.double(), torch.tensor(ntokens, device=self.device)])
        self.dist.all_reduce_sum(totals)
        total, count = totals.tolist()
        if not math.isfinite(total):  # e.g. one huge update: its weights give NaN everywhere
            raise TrainingError(f"validation loss at step {self.step} is not finite: {DIVERGED}")
        src_lang, tgt_lang = self.langs
        sources = (self.data_dir / f"valid.{src_lang}").read_text(encoding="utf-8").splitlines()
        translator = Translator(
            TorchEngine.in_training(self.cfg, self.model, self.src_tok, self.tgt_tok, self.device)
        )
        mine = [t.text for t in translator.translate(sources[rank::world])]
        shares = self.dist.all_gather_object(mine)
        bleu = math.nan
        if self.dist.is_main:
            hyps = [""] * len(sources)
            for share_rank, share in enumerate(shares):
                hyps[share_rank::world] = share
            refs = (self.data_dir / f"valid.{tgt_lang}").read_text(encoding="utf-8").splitlines()
            bleu = self.bleu.corpus_score(hyps, [refs]).score
        return {"valid_loss": total / max(count, 1), "valid_bleu": bleu}

    def judge(self, metrics: dict[str, float]) -> tuple[bool, bool]:
        """Whether this validation is the best so far, and whether early stopping says stop."""
        score = self._score(metrics)
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_bleu = score, metrics["valid_bleu"]
            self.best_step, self.bad_validations = self.step, 0
        else:
            self.bad_validations += 1
        patience = self.cfg.train.patience
        return improved, patience > 0 and self.bad_validations >= patience

    def _score(self, metrics: dict[str, float]) -> float:
        """The figure that ranks checkpoints, larger is better: validation BLEU, or minus the
        validation loss where BLEU says little (three-word outputs of the NTM tasks)."""
        if self.cfg.train.best_metric == "loss":
            return -metrics["valid_loss"]
        return metrics["valid_bleu"]

    def validate_and_checkpoint(self, record: Callable[[dict[str, float]], None]) -> bool:
        """All processes validate; rank 0 records, judges and writes the one checkpoint file
        while the others go on to the next update (they wait there only for that write)."""
        metrics = self.validate()
        improved = early_stop = False
        if self.dist.is_main:
            record({**metrics, "valid_bleu_signature": self.bleu.get_signature().format()})
            improved, early_stop = self.judge(metrics)
        early_stop = self.dist.broadcast_flag(early_stop)
        if self.dist.is_main:
            self.write_checkpoints(metrics, improved)
        return early_stop

    # --- the loop --------------------------------------------------------------------------
    def run(
        self,
        interrupt: StopSignals,
        record: Callable[[dict[str, float]], None],
        on_step: Callable[[int], None] | None = None,
    ) -> str:
        """Update until max_steps, max_seconds, early stopping or a signal; return which one.

        Only logging and validation steps wait for the device (see `update.py`)."""
        t, dist = self.cfg.train, self.dist
        window_tokens, window_start = 0, time.perf_counter()
        deadline = window_start + t.max_seconds if t.max_seconds > 0 else math.inf
        while self.step < t.max_steps:
            if t.max_epochs and self.epoch >= t.max_epochs:  # a finished run, continued
                return "max_epochs"
            batches = self.epoch_batches()
            while self.batch_in_epoch < len(batches):
                start, size = self.batch_in_epoch, self.batches_per_update
                window_tokens += self.update(batches[start : start + size])
                self.batch_in_epoch += self.batches_per_update
                self.step += 1
                if on_step is not None:
                    on_step(self.step)
                # rank 0's clock decides, so that processes cannot part ways by a millisecond
                now = time.perf_counter()
                out_of_time = deadline < math.inf and dist.broadcast_flag(now >= deadline)
                epoch_done = self.batch_in_epoch >= len(batches)
                last_epoch_done = epoch_done and 0 < t.max_epochs <= self.epoch + 1
                at_end = self.step == t.max_steps or out_of_time or last_epoch_done
                if self.step % t.log_every == 0 or at_end:
                    report = self.updater.report()
                    tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    record(
                        {
                            "loss": report.loss,
                            "lr": learning_rate(t, self.step),
                            "tok_per_s": round(tps, 1),
                            "skipped_updates": report.skipped_updates,
                            "overflow_updates": report.overflow_updates,
                        }
                    )
                    window_tokens, window_start = 0, time.perf_counter()
                early_stop = False
                if self.validates and (self.step % t.valid_every == 0 or at_end):
                    self.updater.check()  # a diverged model is not validated nor saved
                    early_stop = self.validate_and_checkpoint(record)
                    window_start = time.perf_counter()
                # Checked after validation: a validation due at this step must not be skipped,
                # or the resumed run (which starts at the next step) would never run it.
                if early_stop:
                    return "early_stopping"
                if dist.any(interrupt.raised):  # every process stops at the same update
                    return "interrupted"
                if at_end:
                    if out_of_time:
                        return "time_limit"
                    return "max_steps" if self.step == t.max_steps else "max_epochs"
            self.epoch += 1
            self.batch_in_epoch = 0
        return "max_steps"


def check_valid_lengths(reader: ShardReader, max_len: int, text: Path) -> None:
    """Validation translates every source sentence (the lines of `text`), and the translator
    refuses one longer than the model's limit: find it now, not after training to the first
    validation."""
    lengths = reader.src_lengths
    over = np.flatnonzero(lengths > max_len)
    if len(over):
        line = int(over[0])
        raise ConfigError(
            f"validation sentence {text} line {line + 1} has {int(lengths[line])} subwords, more "
            f"than model.max_len {max_len}; raise model.max_len or shorten the sentence"
        )


def collate_stored(
    reader: ShardReader, indices: Sequence[int], device: torch.device, width: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of stored pairs `indices`, padded (to `width` columns, if more), on `device`."""
    return collate_padded(
        *reader.padded("src", indices, width), *reader.padded("tgt", indices, width), device
    )
