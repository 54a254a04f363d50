"""OWL's allocation (Yin et al. 2024) from layer outlier ratios."""

from __future__ import annotations

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches, min_max_scaled, solve_level
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Plan
from ecoflap_exp.options import NonNegativeFloat


class OwlAllocation(Allocation):
    """With outlier ratios D_g as scores, min-max scale them to [0, 2 lambda], centre them on their
    mean, and give group g the sparsity p - (scaled D_g - mean): groups with more outliers are
    pruned less. The mean is weighted by group size, so the total stays exact when blocks differ in
    size (with equal blocks, as in LLaMA, it is OWL's plain mean). A group above `max_sparsity` is
    held there and the others move up together to keep the total."""

    def __init__(self, lam: NonNegativeFloat = 0.08):
        self.lam = lam

    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        unit = min_max_scaled(scores)
        if unit is None:
            return dict.fromkeys(scores, sparsity)
        sizes = groups.sizes
        scaled = {g: u * 2 * self.lam for g, u in unit.items()}
        mean = sum(v * sizes[g] for g, v in scaled.items()) / sum(sizes[g] for g in scaled)
        raw = {g: sparsity - (v - mean) for g, v in scaled.items()}

        def shifted(shift: float) -> dict[str, float]:
            return {g: min(v + shift, max_sparsity) for g, v in raw.items()}

        plan = raw
        if max(raw.values()) > max_sparsity:
            total = sum(sizes[g] for g in raw)
            shift = solve_level(lambda s: sum(v * sizes[g] for g, v in shifted(s).items()), sparsity * total, 0.0,
                                max_sparsity)
            plan = shifted(shift)
        if not all(0 <= v < 1 for v in plan.values()):
            raise UserError(f"OWL gives block sparsities outside [0, 1) at sparsity={sparsity} with "
                            f"lambda={self.lam}; lower allocation.lam")
        return plan
