"""Per-weight importance during iterative pruning, as Nofear18/ID_VL_Pruning's `Pruner` computes it
(`update_ipt_with_local_window`, `mask_with_threshold`), after each optimizer step from the
updated weight w and this step's gradient g:
- magnitude: |w|;
- taylor: |w g|;
- platon (Zhang et al. 2022): the sensitivity |w g| averaged over a window of delta_t steps; at every
  step t with t % delta_t == 0, first I_bar <- b1 I_bar + (1 - b1) I and
  U <- b2 U + (1 - b2) |I - I_bar| from the window's average I, then a new window starts with this
  step's |w g|; the score is I_bar U (b2 = 1: I_bar alone).
A matrix's score is multiplied by its intrinsic dimension when IDs are given (no exponent or
weight: only the ratios between matrices matter under one global threshold).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import PrunableMatrix
from ecoflap_exp.options import Count, Fraction

ImportanceKind = Literal["magnitude", "taylor", "platon"]


def check_betas(beta1: float, beta2: float) -> None:
    if not 0 <= beta1 < 1 or not 0 < beta2 <= 1:
        raise UserError(f"finetune.beta1={beta1} must lie in [0, 1) and finetune.beta2={beta2} in (0, 1] "
                        f"(PLATON: 0.85 and 0.95; beta2=1 scores I_bar alone)")


class Importance:
    """The state of one score over the prunable matrices (fp32, on the weights' device); its
    state_dict is what a checkpoint keeps of it."""

    def __init__(self, kind: ImportanceKind, matrices: list[PrunableMatrix], delta_t: Count = 10,
                 beta1: Fraction = 0.85, beta2: Fraction = 0.95):
        check_betas(beta1, beta2)
        self.kind, self.delta_t, self.beta1, self.beta2 = kind, delta_t, beta1, beta2
        self.matrices = matrices
        self.ipt: dict[str, torch.Tensor] = {}
        self.avg: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.ipt, self.avg, self.unc = {}, {}, {}

    @torch.no_grad()
    def update(self, step: int) -> None:
        for m in self.matrices:
            w = m.weight.float()
            if self.kind == "magnitude":
                self.ipt[m.name] = w.abs()
                continue
            grad = m.param.grad
            if grad is None:
                raise UserError(f"{m.name} has no gradient after a training step; finetune.score={self.kind} needs "
                                f"the gradients of every pruned matrix (is it frozen?)")
            sensitivity = (w * m.part(grad).float()).abs()
            if self.kind == "taylor":
                self.ipt[m.name] = sensitivity
                continue
            if m.name not in self.avg:
                self.ipt[m.name] = torch.zeros_like(w)
                self.avg[m.name] = torch.zeros_like(w)
                self.unc[m.name] = torch.zeros_like(w)
            local = step % self.delta_t
            if local == 0:
                self.avg[m.name].mul_(self.beta1).add_(self.ipt[m.name], alpha=1 - self.beta1)
                self.unc[m.name].mul_(self.beta2).add_((self.ipt[m.name] - self.avg[m.name]).abs(),
                                                       alpha=1 - self.beta2)
                self.ipt[m.name] = sensitivity
            else:
                self.ipt[m.name] = (self.ipt[m.name] * local + sensitivity) / (local + 1)

    def score(self, matrix: PrunableMatrix) -> torch.Tensor:
        if self.kind != "platon":
            return self.ipt[matrix.name]
        if self.beta2 == 1:
            return self.avg[matrix.name]
        return self.avg[matrix.name] * self.unc[matrix.name]

    def state_dict(self) -> dict[str, Any]:
        return {"ipt": self.ipt, "avg": self.avg, "unc": self.unc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint (accelerate loads it onto the CPU): onto the weights' devices."""
        device = {m.name: m.weight.device for m in self.matrices}
        self.ipt, self.avg, self.unc = ({name: t.to(device[name]) for name, t in state[key].items()}
                                        for key in ("ipt", "avg", "unc"))
