"""ECoFLaP's allocation (reference/ecoflap.md section 2), water-filling.

With N prunable weights and target sparsity p, K = (1 - p) N weights are kept. Every block keeps
at least n_g (1 - p_max) (so no block goes past p_max); the remaining budget goes to blocks in
proportion to their scores, a block never keeping more than all its weights, the overflow of
saturated blocks going to the others:

    keep_g = min(n_g, n_g (1 - p_max) + lambda * S_g),   lambda such that sum keep_g = K.

lambda is solved exactly (no iterated ceil, so no overshoot to correct) and the sparsities are
real numbers; each matrix rounds its own count when it is pruned.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Literal

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Plan

log = logging.getLogger(__name__)
Scope = Literal["joint", "per_tower"]


def _water_fill(floor: list[float], cap: list[float], weight: list[float], budget: float) -> list[float]:
    """keep_g = floor_g + min(cap_g - floor_g, lam * weight_g) with sum keep_g = budget (as close
    as the caps allow)."""
    room = [c - f for c, f in zip(cap, floor, strict=True)]
    active = [g for g, w in enumerate(weight) if w > 0 and room[g] > 0]
    active.sort(key=lambda g: room[g] / weight[g])
    remaining = budget - sum(floor)
    weight_sum = sum(weight[g] for g in active)
    saturated: set[int] = set()
    for g in active:
        if remaining <= weight_sum * room[g] / weight[g]:
            break
        saturated.add(g)
        remaining -= room[g]
        weight_sum -= weight[g]
    lam = remaining / weight_sum if weight_sum > 0 else 0.0
    keep = list(floor)
    for g in active:
        keep[g] += room[g] if g in saturated else lam * weight[g]
    return keep


def allocate(
    scores: dict[str, float], sizes: dict[str, int], sparsity: float, max_sparsity: float
) -> dict[str, float]:
    """Per-block sparsity whose parameter-weighted mean is `sparsity`, each in [0, max_sparsity]."""
    if not 0 <= sparsity < 1:
        raise UserError(f"sparsity={sparsity} is outside [0, 1)")
    if not sparsity <= max_sparsity <= 1:
        raise UserError(f"max_sparsity={max_sparsity} must lie in [sparsity={sparsity}, 1]")
    names = list(sizes)
    if set(scores) != set(names):
        raise ValueError(f"scores and sizes name different blocks: {set(scores) ^ set(names)}")
    bad = {n: s for n, s in scores.items() if not s >= 0 or s == float("inf")}
    if bad:
        raise UserError(f"block scores must be finite and non-negative; got {bad}")
    n = [float(sizes[g]) for g in names]
    floor = [ng * (1 - max_sparsity) for ng in n]
    budget = sum(n) * (1 - sparsity)
    keep = _water_fill(floor, n, [scores[g] for g in names], budget)
    shortfall = budget - sum(keep)
    if shortfall > 1e-6 * budget:
        # all scores zero, or the scored blocks cannot absorb the budget: the rest goes to every
        # block in proportion to its free room, which is uniform when nothing was scored
        log.warning("block scores cannot place %.0f kept weights; spreading them by block size", shortfall)
        keep = _water_fill(keep, n, [ng - k for ng, k in zip(n, keep, strict=True)], budget)
    # rounded so that uniform scores give exactly the target rather than p +- 1e-16
    return {g: round(min(max(1 - k / ng, 0.0), 1.0), 12) for g, k, ng in zip(names, keep, n, strict=True)}


class WaterFilling(Allocation):
    """ECoFLaP's allocation, over all towers at once (`joint`, the paper's) or each tower alone
    at the target (`per_tower`)."""

    def __init__(self, scope: Scope = "joint"):
        self.scope = scope

    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        sizes = groups.sizes
        if self.scope == "joint":
            return allocate(scores, {g: sizes[g] for g in scores}, sparsity, max_sparsity)
        by_tower: dict[str, list[str]] = defaultdict(list)
        for g in scores:
            by_tower[groups.towers[g]].append(g)
        plan: Plan = {}
        for names in by_tower.values():
            plan.update(allocate({g: scores[g] for g in names}, {g: sizes[g] for g in names}, sparsity, max_sparsity))
        return plan
