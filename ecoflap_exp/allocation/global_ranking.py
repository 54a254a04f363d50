"""Global ranking (the intrinsic-dimension paper's use of ID): one threshold over every prunable
weight of the score |W_ij| * ||X_j||_2 * s_g, where s_g is the score of the weight's group (its
block's or matrix's ID with scorer=id). Each matrix's sparsity is the share of its weights below
the threshold, held at `max_sparsity` at most (the threshold then rises for the others); the local
pruner then prunes each matrix at that sparsity.

The threshold is found on per-matrix sketches of |W| ||X|| (order statistics from the scoring
step, scaled by the group score and interpolated), not on all weights at once, so memory stays at
one block's statistics; the sparsities average exactly to the target.
"""

from __future__ import annotations

import numpy as np

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches, solve_level
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Plan


class GlobalRanking(Allocation):
    name = "global"

    def __init__(self, quantiles: int = 4096):
        if quantiles < 2:
            raise UserError(f"allocation.quantiles={quantiles} must be >= 2 (order statistics per matrix)")
        self.sketch_quantiles = quantiles

    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        if sketches is None:
            raise ValueError("global ranking plans from the scoring step's sketches of |W| ||X||")
        scaled = {m: q * (scores[m] if m in scores else scores[groups.block_of[m]]) for m, q in sketches.items()}
        sizes = {m: groups.sizes[m] for m in scaled}

        def fractions(threshold: float) -> dict[str, float]:
            return {m: min(float(np.interp(threshold, q, np.linspace(0, 1, len(q)))), max_sparsity)
                    for m, q in scaled.items()}

        total = sum(sizes.values())
        low = min(float(q[0]) for q in scaled.values())
        high = max(float(q[-1]) for q in scaled.values())
        plan = fractions(solve_level(lambda t: sum(f * sizes[m] for m, f in fractions(t).items()),
                                     sparsity * total, low, high))
        # the bisection's last step leaves a sliver off the exact total: spread it evenly
        excess = (sum(f * sizes[m] for m, f in plan.items()) - sparsity * total) / total
        return {m: min(max(f - excess, 0.0), max_sparsity) for m, f in plan.items()}
