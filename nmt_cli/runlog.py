"""Where a training run reports, for a person watching and for one reading days later: the
progress bar and console, `train.log`, `metrics.jsonl`, `config.yaml` and TensorBoard (when
asked). Only rank 0 reports; on other processes every call is a no-op.

`train.log` is what the console showed, without the progress bar, each line timestamped: the
start-up banner, the training loss every `log_every` updates, validations, the reason the run
stopped. It only grows: a continued run appends to it. `metrics.jsonl` has one JSON object per
line, `{"step": N, "time": ISO-8601, "epoch": E, ...}`: training lines carry loss, lr and
tok_per_s, validation lines valid_loss and valid_bleu. A continued run first drops the lines
after its checkpoint's step (updates it does again), so each step has one line. `config.yaml`
is the resolved config, usable as a recipe.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.markup import escape
from rich.progress import TextColumn

from nmt_cli.console import console, progress
from nmt_cli.errors import ConfigError
from nmt_cli.outputs import open_output, write_error

# A log line that cannot be written stops the run; the checkpoints already saved stay valid.
_KEPT = "the checkpoints saved so far are intact"
CONFIG_HEADER = "# The resolved config of this run; usable as a recipe.\n"


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
        config_yaml: str,
    ) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.start_step, self.config_yaml = start_step, config_yaml
        self.writer = (
            _tensorboard_writer(run_dir / "tensorboard") if enabled and tensorboard else None
        )
        self.bar = progress(
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TextColumn("lr {task.fields[lr]:.2e}"),
        )
        self.task = self.bar.add_task(
            "train",
            total=total_steps,
            completed=start_step,
            loss=0.0,
            tps=0.0,
            lr=0.0,
            visible=enabled and show_progress,
        )
        self.files: dict[str, IO[str]] = {}

    def __enter__(self) -> RunLog:
        if self.enabled:
            with open_output(self.run_dir / "config.yaml") as out:
                out.write(CONFIG_HEADER + self.config_yaml)
            self._keep_metrics_up_to(self.start_step)
            for name in ("metrics.jsonl", "train.log"):
                path = self.run_dir / name
                try:
                    self.files[name] = path.open("a", encoding="utf-8")
                except OSError as exc:
                    raise write_error(path, exc, _KEPT) from None
            self.bar.start()
        return self

    def __exit__(
        self, kind: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self.bar.stop()
            for file in self.files.values():
                with contextlib.suppress(OSError):  # a failed write was reported when it happened
                    file.close()
            if self.writer is not None:
                self.writer.close()

    def _keep_metrics_up_to(self, step: int) -> None:
        """Drop the lines of steps after `step`: the run does those updates again."""
        path = self.run_dir / "metrics.jsonl"
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise write_error(path, exc, _KEPT) from None
        kept = [line for line in lines if (logged := _step_of(line)) is not None and logged <= step]
        if len(kept) < len(lines):
            with open_output(path) as out:
                out.writelines(line + "\n" for line in kept)

    def say(self, message: str) -> None:
        """A line for the console and train.log."""
        if self.enabled:
            console.print(escape(message), highlight=False, soft_wrap=True)
            self._write("train.log", f"{_now()} {message}\n")

    def record(self, step: int, entry: dict[str, float | str]) -> None:
        if not self.enabled:
            return
        self._write("metrics.jsonl", json.dumps({"step": step, "time": _now(), **entry}) + "\n")
        if self.writer is not None:
            for name, value in entry.items():
                if isinstance(value, int | float):  # not the BLEU signature
                    self.writer.add_scalar(name, value, step)
        if "loss" in entry:
            self.bar.update(
                self.task,
                completed=step,
                loss=entry["loss"],
                tps=entry["tok_per_s"],
                lr=entry["lr"],
            )
            self._write(
                "train.log",
                f"{_now()} step {step}: loss {entry['loss']:.4f}, "
                f"lr {entry['lr']:.3g}, {entry['tok_per_s']:,.0f} tok/s\n",
            )
        else:
            line = (
                f"step {step}: valid loss {entry['valid_loss']:.3f}, BLEU {entry['valid_bleu']:.2f}"
            )
            console.log(line)
            self._write("train.log", f"{_now()} {line}\n")

    def _write(self, name: str, text: str) -> None:
        file = self.files[name]
        try:
            file.write(text)
            file.flush()
        except OSError as exc:
            raise write_error(file.name, exc, _KEPT) from None


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line, or None for a line cut short by a kill."""
    try:
        entry: Any = json.loads(line)
    except ValueError:
        return None
    step = entry.get("step") if isinstance(entry, dict) else None
    return step if isinstance(step, int) else None


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package; pip install "
            "'nmt-cli[tensorboard]', or set train.tensorboard: false"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))
