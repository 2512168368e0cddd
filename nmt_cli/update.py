"""One optimizer update: gradient accumulation, mixed precision, loss scaling, gradient
clipping and the guard against non-finite gradients, with no wait for the device.

An update sums the token-level cross-entropy over several micro-batches (`accum_steps` on
each of `world_size` processes) and multiplies the summed gradient by world_size / tokens,
where `tokens` counts the target tokens of the whole update, so it equals one update on the
union of the batches however they are split across accumulation steps and processes (DDP
averages gradients over processes; fairseq normalises the same way). Every process knows
the whole update's batches, so `tokens` comes from their lengths on the host.

The host never waits for the device in an ordinary update: it queues the work and goes on to
prepare the next batches while a GPU computes, instead of adding the two times up. So:
- whether the gradient is finite is decided on the device (from its norm), and the fused Adam
  kernel skips the step there (its `found_inf`, what GradScaler uses). A non-finite gradient
  means the model diverged or met a bad batch; such an update still counts as a step (as in
  Megatron-LM) and is counted in `skipped_updates`. Training stops with a clear message after
  `max_bad_updates` of them in a row, noticed at the next `report`.
- fp16 needs a loss scale: small gradients would underflow to zero in half precision, so the
  loss is multiplied before backward and the gradients divided after. When the scale is too
  large a gradient overflows; GradScaler then skips the update and halves the scale (an
  "overflow step", counted in `overflow_updates`, harmless unless the scale keeps falling).
- the loss and the counters stay on the device; `report()`, called every `log_every`
  updates, reads them in one go.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from nmt_cli.distributed import Distributed
from nmt_cli.errors import TrainingError

MIN_LOSS_SCALE = 1e-4  # fairseq's floor: below it fp16 cannot represent this model's gradients
# What a run that diverged says: where to go on from, and what to change.
DIVERGED = (
    "training diverged; resume from an earlier step-N.pt with a lower train.lr or more "
    "train.warmup_steps"
)


@dataclasses.dataclass(frozen=True)
class Report:
    loss: float  # mean cross-entropy per target token over the applied updates since the last
    skipped_updates: int  # non-finite gradients, since the run began
    overflow_updates: int  # fp16 loss-scale overflows, since the run began


class Updater:
    """Runs updates for one model replica. `loss_module(*batch)` returns a micro-batch's
    summed loss (a `loss.TokenLoss`, perhaps wrapped by DDP and torch.compile)."""

    def __init__(
        self,
        loss_module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        precision: str,
        clip_norm: float,
        max_bad_updates: int,
        dist: Distributed,
    ) -> None:
        self.loss_module, self.optimizer, self.device, self.dist = (
            loss_module,
            optimizer,
            device,
            dist,
        )
        self.clip_norm, self.max_bad_updates = clip_norm, max_bad_updates
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        counter = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self.window_loss, self.window_tokens = counter(), counter()  # since the last report
        self.skipped, self.overflows = counter(), counter()
        self.bad_in_a_row, self.worst_in_a_row = counter(), counter()

    def __call__(self, micro_batches: list, lr: float, tokens: int) -> None:
        """Queue one update over this process's `micro_batches`; `tokens`: the target tokens
        of the whole update, on every process."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients in backward; only the last micro-batch needs it.
            sync = (
                contextlib.nullcontext()
                if last or not self.dist.enabled
                else self.loss_module.no_sync()
            )
            with sync:
                loss = self.loss_module(*batch)
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        found_inf = self._step(self.dist.world_size / max(tokens, 1))
        self.window_loss += torch.where(found_inf > 0, 0.0, loss_sum)
        self.window_tokens += (1.0 - found_inf) * tokens

    def _step(self, grad_multiplier: float) -> torch.Tensor:
        """Unscale, normalise and clip the gradients, then step unless one is not finite;
        returns that verdict as a device tensor (1.0: skipped)."""
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, grad_multiplier)  # one kernel for all, not one each
        if self.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        found_inf = (~torch.isfinite(norm)).to(torch.float64)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skipped on the device when a gradient is not finite
            self.scaler.update()
            self.overflows += found_inf
            return found_inf
        # What GradScaler hands a fused optimizer: skip the step on the device.
        self.optimizer.found_inf = found_inf.float()
        self.optimizer.grad_scale = None
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf, self.optimizer.grad_scale
        self.skipped += found_inf
        self.bad_in_a_row.add_(1.0).mul_(found_inf)
        torch.maximum(self.worst_in_a_row, self.bad_in_a_row, out=self.worst_in_a_row)
        return found_inf

    def report(self) -> Report:
        """Read the counters (the one wait for the device): the mean loss since the last
        report, over all processes; stop a run that diverged."""
        self.check()
        totals = torch.stack([self.window_loss, self.window_tokens])
        self.dist.all_reduce_sum(totals[:1])  # every process counted all the update's tokens
        loss_sum, tokens = totals.tolist()
        self.window_loss.zero_()
        self.window_tokens.zero_()
        return Report(
            loss=loss_sum / tokens if tokens else float("nan"),
            skipped_updates=int(self.skipped),
            overflow_updates=int(self.overflows),
        )

    def check(self) -> None:
        """Stop with a clear message if `max_bad_updates` updates in a row were non-finite, or
        fp16's loss scale fell below anything useful (every process decides alike: the
        gradients they judge are the same all-reduced ones)."""
        worst = int(self.worst_in_a_row)
        self.worst_in_a_row.copy_(self.bad_in_a_row)
        if worst >= self.max_bad_updates:
            raise TrainingError(
                f"loss or gradient was not finite for {worst} updates in a row: {DIVERGED}"
            )
        if self.scaler.is_enabled() and self.scaler.get_scale() < MIN_LOSS_SCALE:
            raise TrainingError(
                f"fp16 loss scale fell below {MIN_LOSS_SCALE}: gradients overflow at every "
                "scale; train with precision bf16 or fp32, or lower train.lr"
            )

    def state_dict(self) -> dict:
        return {
            "scaler": self.scaler.state_dict(),
            "overflow_updates": int(self.overflows),
            "skipped_updates": int(self.skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.overflows.fill_(state["overflow_updates"])
        self.skipped.fill_(state["skipped_updates"])
