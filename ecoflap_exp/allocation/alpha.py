"""AlphaPruning's allocation (Lu et al. 2024) from per-group alphas (scorer=alpha)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches, min_max_scaled, solve_level
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Plan

#: the half-width of the factors around 1; below 1 so that every factor stays positive
Epsilon = Annotated[float, Field(ge=0, lt=1)]


class AlphaAllocation(Allocation):
    """The reference's ww_sparsity (haiquanlu/AlphaPruning lib/prune.py:152-187): the scores
    (alphas) min-max scaled linearly to factors f_g in [1 - epsilon, 1 + epsilon], then every
    factor multiplied by the one constant c that makes the size-weighted mean sparsity the target:
    p_g = c f_g with c = p N / sum_g n_g f_g. A higher alpha gets a higher sparsity. The range is
    multiplicative, c [1 - epsilon, 1 + epsilon] (c close to 1): at p = 0.7 and epsilon = 0.3,
    about [0.49, 0.91].

    Where we differ: equal scores give the uniform plan (the reference divides by max - min = 0);
    c is computed in float64 (the reference's p N is float32, so its mean misses the target by up
    to 6e-8 of itself); a group above `max_sparsity` is held there and c grows for the others to
    keep the total (the reference has no ceiling: +experiment/method=alpha sets max_sparsity=1.0);
    a plan with a group at sparsity 1 is refused (the reference prunes such a layer whole)."""

    def __init__(self, epsilon: Epsilon = 0.3):
        self.epsilon = epsilon

    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        unit = min_max_scaled(scores)
        if unit is None:
            return dict.fromkeys(scores, sparsity)
        sizes = groups.sizes
        s1, s2 = 1 - self.epsilon, 1 + self.epsilon
        factors = {g: u * (s2 - s1) + s1 for g, u in unit.items()}
        total = sum(sizes[g] for g in factors)
        weighted = sum(f * sizes[g] for g, f in factors.items())

        def scaled(c: float) -> dict[str, float]:
            return {g: min(c * f, max_sparsity) for g, f in factors.items()}

        plan = {g: sparsity * total / weighted * f for g, f in factors.items()}  # the reference's scaler
        if max(plan.values()) > max_sparsity:
            c = solve_level(lambda c: sum(v * sizes[g] for g, v in scaled(c).items()), sparsity * total, 0.0,
                            max_sparsity / min(factors.values()))
            plan = scaled(c)
        if max(plan.values()) >= 1:
            raise UserError(f"AlphaPruning gives a block sparsity of 1 at sparsity={sparsity} with epsilon="
                            f"{self.epsilon}; lower allocation.epsilon")
        return plan
