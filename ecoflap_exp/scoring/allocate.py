"""Scores -> per-group sparsity. `WaterFilling` is ECoFLaP's (reference/ecoflap.md section 2);
`OwlAllocation` is OWL's formula; `GlobalRanking` (global_ranking.py) lets sparsities emerge from
one threshold over all weights.

ECoFLaP's water-filling:

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
from abc import ABC, abstractmethod
from collections import defaultdict

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.scoring.base import check_choice, group_sizes, group_tower

log = logging.getLogger(__name__)


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


Plan = dict[str, float]


class Allocation(ABC):
    @abstractmethod
    def plan(self, adapter: ModelAdapter, batches: list[Batch], scores: dict[str, float], sparsity: float,
             max_sparsity: float) -> Plan:
        """Group (block or matrix) name -> sparsity, averaging `sparsity` over all prunable weights."""


class WaterFilling(Allocation):
    """ECoFLaP's allocation, over all towers at once (`joint`, the paper's) or each tower alone
    at the target (`per_tower`)."""

    def __init__(self, scope: str = "joint"):
        check_choice("allocation.scope", scope, ("joint", "per_tower"))
        self.scope = scope

    def plan(self, adapter: ModelAdapter, batches: list[Batch], scores: dict[str, float], sparsity: float,
             max_sparsity: float) -> Plan:
        sizes = group_sizes(adapter)
        if self.scope == "joint":
            return allocate(scores, {g: sizes[g] for g in scores}, sparsity, max_sparsity)
        owner = group_tower(adapter)
        by_tower: dict[str, list[str]] = defaultdict(list)
        for g in scores:
            by_tower[owner[g]].append(g)
        plan: Plan = {}
        for names in by_tower.values():
            plan.update(allocate({g: scores[g] for g in names}, {g: sizes[g] for g in names}, sparsity, max_sparsity))
        return plan


class OwlAllocation(Allocation):
    """OWL (Yin et al. 2024): with outlier ratios D_g as scores, min-max scale them to
    [0, 2 lambda], centre them on their mean, and give group g the sparsity p - (scaled D_g - mean):
    groups with more outliers are pruned less. The mean is weighted by group size, so the total
    stays exact when blocks differ in size (with equal blocks, as in LLaMA, it is OWL's plain mean)."""

    def __init__(self, lam: float = 0.08):
        self.lam = lam

    def plan(self, adapter: ModelAdapter, batches: list[Batch], scores: dict[str, float], sparsity: float,
             max_sparsity: float) -> Plan:
        low, high = min(scores.values()), max(scores.values())
        if high == low:
            return dict.fromkeys(scores, sparsity)
        sizes = group_sizes(adapter)
        scaled = {g: (s - low) / (high - low) * 2 * self.lam for g, s in scores.items()}
        mean = sum(v * sizes[g] for g, v in scaled.items()) / sum(sizes[g] for g in scaled)
        plan = {g: sparsity - (v - mean) for g, v in scaled.items()}
        if not all(0 <= v < 1 for v in plan.values()):
            raise UserError(f"OWL gives block sparsities outside [0, 1) at sparsity={sparsity} with "
                            f"lambda={self.lam}; lower allocation.lam")
        return plan
