"""The cubic remaining-ratio schedule of iterative pruning (Sanh et al. 2020, Zhang et al. 2022),
as Nofear18/ID_VL_Pruning's `Pruner.schedule_threshold_comb` computes it.

Steps t count optimizer steps from 1; T is the total, t_i and t_f the initial and final warm-ups
(the reference gives them in epochs: warm-up epochs x steps per epoch):
- t <= t_i: r = r_0, no masking;
- t > T - t_f: r = r_f, masking at every step;
- otherwise r = r_f + (r_0 - r_f) (1 - (t - t_i) / (T - t_i - t_f))^3, masking every delta_t steps
  and at the end of each epoch; and always at the last step, so the run ends at r_f whatever
  T's divisors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoflap_exp.errors import UserError


@dataclass(frozen=True)
class CubicSchedule:
    total_steps: int
    initial_warmup_steps: int
    final_warmup_steps: int
    steps_per_epoch: int
    delta_t: int
    initial_ratio: float
    final_ratio: float

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.steps_per_epoch < 1:
            raise UserError(f"fine-tuning has {self.total_steps} optimizer steps ({self.steps_per_epoch} per epoch); "
                            f"give it training samples for at least one batch (finetune.batch_size, finetune.epochs)")
        if self.delta_t < 1:
            raise UserError(f"finetune.delta_t={self.delta_t} must be >= 1 (steps between masking)")
        if self.initial_warmup_steps < 0 or self.final_warmup_steps < 0:
            raise UserError(f"finetune warm-ups must be >= 0 (initial {self.initial_warmup_steps}, final "
                            f"{self.final_warmup_steps} steps)")
        if self.initial_warmup_steps + self.final_warmup_steps >= self.total_steps:
            raise UserError(
                f"the warm-ups leave no steps to prune in: initial {self.initial_warmup_steps} + final "
                f"{self.final_warmup_steps} steps >= {self.total_steps} total ({self.steps_per_epoch} steps per "
                f"epoch); lower finetune.initial_warmup / finetune.final_warmup (in epochs) or train longer "
                f"(finetune.epochs)")
        if not 0 <= self.final_ratio <= self.initial_ratio <= 1:
            raise UserError(f"the schedule must go from a remaining ratio {self.initial_ratio:g} down to "
                            f"{self.final_ratio:g} within [0, 1]; the target sparsity must exceed the starting one")

    def at(self, step: int) -> tuple[float, bool]:
        """(remaining ratio, whether to mask) after optimizer step `step` (from 1)."""
        t_i, t_f, total = self.initial_warmup_steps, self.final_warmup_steps, self.total_steps
        if step <= t_i:
            return self.initial_ratio, False
        if step > total - t_f:
            return self.final_ratio, True
        progress = 1 - (step - t_i) / (total - t_i - t_f)
        ratio = self.final_ratio + (self.initial_ratio - self.final_ratio) * progress**3
        return ratio, step % self.delta_t == 0 or step % self.steps_per_epoch == 0 or step == total
