"""One optimizer update: gradient accumulation, mixed precision, loss scaling, gradient
clipping, and the guard against non-finite losses.

An update sums the token-level cross-entropy over several micro-batches (`accum_steps` on
each of `world_size` processes) and divides the summed gradient by the number of target
tokens in all of them, so it equals one update on the union of the batches, however they
are split across accumulation steps and processes. DDP averages gradients over processes;
multiplying by world_size / tokens turns that average into the per-token mean (fairseq does
the same).

fp16 needs a loss scale: small gradients would underflow to zero in half precision, so the
loss is multiplied before backward and the gradients divided after. When the scale is too
large a gradient overflows to inf; the update is then skipped and the scale halved (an
"overflow step", reported but harmless). A non-finite *loss* is different: the model itself
has diverged or met a bad batch, so the update is skipped and counted, and training stops
with a clear message after `max_bad_updates` of them in a row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F

from nmt_cli.data.tokenizer import PAD
from nmt_cli.distributed import Distributed
from nmt_cli.errors import TrainingError
from nmt_cli.runtime import autocast

MIN_LOSS_SCALE = 1e-4  # fairseq's floor: below it fp16 cannot represent this model's gradients


@dataclasses.dataclass(frozen=True)
class UpdateOutcome:
    loss: float  # mean cross-entropy per target token over the whole update (all processes)
    tokens: int  # target tokens in the whole update
    applied: bool  # False when the update was skipped (non-finite loss or fp16 overflow)
    overflow: bool  # the fp16 loss scale overflowed and was lowered
    nonfinite: bool  # the loss was NaN or inf


def token_loss(
    model: torch.nn.Module, batch, *, label_smoothing: float, device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (label-smoothed) cross-entropy over a batch's real target tokens, and their count
    (a tensor on the batch's device: reading it would make the CPU wait for the GPU)."""
    src, src_mask, tgt_in, tgt_out = batch
    with autocast(device, precision):
        logits = model(src, src_mask, tgt_in)  # [B, T, V]
    loss = F.cross_entropy(
        logits.float().flatten(0, 1),
        tgt_out.flatten(),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return loss, (tgt_out != PAD).sum()


class Updater:
    """Runs updates for one model replica; `model` may be wrapped by DDP or torch.compile."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        precision: str,
        clip_norm: float,
        label_smoothing: float,
        max_bad_updates: int,
        dist: Distributed,
    ) -> None:
        self.model, self.optimizer, self.device, self.dist = model, optimizer, device, dist
        self.precision, self.clip_norm = precision, clip_norm
        self.label_smoothing, self.max_bad_updates = label_smoothing, max_bad_updates
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.bad_in_a_row = 0
        self.overflow_updates = 0
        self.skipped_updates = 0

    def __call__(self, micro_batches: list, lr: float) -> UpdateOutcome:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        # Summed on the device and read once per update: one wait for the GPU, not one per batch.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients in backward; only the last micro-batch needs it.
            sync = (
                contextlib.nullcontext() if last or not self.dist.enabled else self.model.no_sync()
            )
            with sync:
                loss, count = token_loss(self.model, batch, label_smoothing=self.label_smoothing,
                                         device=self.device, precision=self.precision)  # fmt: skip
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().double()
            tokens += count
        totals = torch.stack([loss_sum, tokens])
        self.dist.all_reduce_sum(totals)
        total_loss, total_tokens = totals.tolist()
        nonfinite = not math.isfinite(total_loss)
        overflow = applied = False
        if nonfinite:
            self._record_bad_update(total_loss)
        else:
            applied, overflow = self._apply(self.dist.world_size / max(total_tokens, 1.0))
        return UpdateOutcome(
            loss=total_loss / max(total_tokens, 1.0),
            tokens=int(total_tokens),
            applied=applied,
            overflow=overflow,
            nonfinite=nonfinite,
        )

    def _apply(self, grad_multiplier: float) -> tuple[bool, bool]:
        """Unscale, normalise and clip the gradients, then step; returns (applied, overflow)."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, grad_multiplier)  # one kernel for all, not one each
        if self.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        else:
            norm = torch.zeros(())
        if not self.scaler.is_enabled():
            if not torch.isfinite(norm):  # finite loss, non-finite gradient: skip as bad
                self._record_bad_update(float(norm))
                return False, False
            self.optimizer.step()
            self.bad_in_a_row = 0
            return True, False
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # skipped inside when a gradient is inf or NaN
        self.scaler.update()
        overflow = self.scaler.get_scale() < scale
        if overflow:
            self.overflow_updates += 1
            if self.scaler.get_scale() < MIN_LOSS_SCALE:
                raise TrainingError(
                    f"fp16 loss scale fell below {MIN_LOSS_SCALE}: gradients overflow at every "
                    "scale; train with precision bf16 or fp32, or lower train.lr"
                )
        else:
            self.bad_in_a_row = 0
        return not overflow, overflow

    def _record_bad_update(self, value: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.max_bad_updates:
            raise TrainingError(
                f"loss or gradient was {value} for {self.bad_in_a_row} updates in a row: training "
                "diverged; resume from an earlier step-N.pt with a lower train.lr or more "
                "train.warmup_steps"
            )

    def state_dict(self) -> dict:
        return {
            "scaler": self.scaler.state_dict(),
            "overflow_updates": self.overflow_updates,
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.overflow_updates = state["overflow_updates"]
        self.skipped_updates = state["skipped_updates"]
