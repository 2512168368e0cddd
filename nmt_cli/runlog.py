"""Where a training run reports: `metrics.jsonl` (always), TensorBoard (when asked), the
progress bar and the console. Only rank 0 reports; on other processes every call is a no-op.

`metrics.jsonl` has one JSON object per line, `{"step": N, ...}`: training lines carry loss,
lr and tok_per_s, validation lines valid_loss and valid_bleu. Scripts and tests read it;
TensorBoard gets the same numbers as scalars under RUN/tensorboard.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import TracebackType

from rich.progress import TextColumn

from nmt_cli.console import console, progress
from nmt_cli.errors import ConfigError
from nmt_cli.outputs import write_error

# A log line that cannot be written stops the run; the checkpoints already saved stay valid.
_KEPT = "the checkpoints saved so far are intact"


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        show_progress: bool,
        total_steps: int,
        start_step: int,
    ) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = (
            _tensorboard_writer(run_dir / "tensorboard") if enabled and tensorboard else None
        )
        self.bar = progress(
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TextColumn("lr {task.fields[lr]:.2e}"),
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step,
                                      loss=0.0, tps=0.0, lr=0.0,
                                      visible=enabled and show_progress)  # fmt: skip

    def __enter__(self) -> RunLog:
        if self.enabled:
            path = self.run_dir / "metrics.jsonl"
            try:
                self.file = path.open("a", encoding="utf-8")
            except OSError as exc:
                raise write_error(path, exc, _KEPT) from None
            self.bar.start()
        return self

    def __exit__(
        self, kind: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self.bar.stop()
            with contextlib.suppress(OSError):  # a failed write was reported when it happened
                self.file.close()
            if self.writer is not None:
                self.writer.close()

    def record(self, step: int, entry: dict[str, float]) -> None:
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps({"step": step, **entry}) + "\n")
            self.file.flush()
        except OSError as exc:
            raise write_error(self.file.name, exc, _KEPT) from None
        if self.writer is not None:
            for name, value in entry.items():
                self.writer.add_scalar(name, value, step)
        if "loss" in entry:
            self.bar.update(self.task, completed=step, loss=entry["loss"],
                            tps=entry["tok_per_s"], lr=entry["lr"])  # fmt: skip
        else:
            console.log(f"step {step}: valid loss {entry['valid_loss']:.3f}, "
                        f"BLEU {entry['valid_bleu']:.2f}")  # fmt: skip


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package; pip install "
            "'nmt-cli[tensorboard]', or set train.tensorboard: false"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))
