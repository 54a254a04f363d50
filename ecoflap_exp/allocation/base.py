"""The allocation contract: scores (and, for global ranking, per-matrix sketches of |W| ||X||) ->
a plan, group name -> sparsity, whose parameter-weighted mean is the target and in which no group
passes `max_sparsity`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Plan
from ecoflap_exp.options import Typed


@dataclass(frozen=True)
class Groups:
    """What an allocation knows of the model: the parameter count and tower of every block and
    every matrix, and the block each matrix belongs to."""

    sizes: dict[str, int]
    towers: dict[str, str]
    block_of: dict[str, str]

    @classmethod
    def of(cls, adapter: ModelAdapter) -> Groups:
        """The groups of the towers the adapter prunes."""
        sizes, towers, block_of = {}, {}, {}
        for tower in adapter.towers():
            for block in tower.blocks:
                sizes[block.name], towers[block.name] = block.numel, tower.name
                for m in block.matrices:
                    sizes[m.name], towers[m.name], block_of[m.name] = m.numel, tower.name, block.name
        return cls(sizes, towers, block_of)


#: the per-weight scores the scoring step can sketch (scoring/sketches.py)
BaseScore = Literal["magnitude", "taylor", "wanda"]


@dataclass(frozen=True)
class Sketch:
    """Ascending order statistics of one matrix's per-weight scores and, for each, how many of its
    weights it stands for (those ranked after the previous one, up to it): the counts sum to the
    matrix's size. From the scoring step (scoring/sketches.py)."""

    values: np.ndarray
    counts: np.ndarray


Sketches = dict[str, Sketch]


class Allocation(Typed, ABC):
    option_group = "allocation"
    #: the allocation's part of a method's name ("" for the allocations a scorer implies)
    name: str = ""
    #: order statistics per matrix the scoring step must sketch for it (0: none), of this score
    sketch_quantiles: int = 0
    sketch_score: str = "wanda"
    #: False for an allocation that plans without the scorer's scores (so scorer=uniform)
    reads_scores: bool = True

    @abstractmethod
    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        """Group (block or matrix) name -> sparsity, averaging `sparsity` over all prunable weights,
        none above `max_sparsity`."""


def min_max_scaled(scores: dict[str, float]) -> dict[str, float] | None:
    """The scores mapped linearly onto [0, 1] (lowest 0, highest 1); None when they are all equal
    (the allocations that scale them then give the uniform plan)."""
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return None
    return {g: (s - low) / (high - low) for g, s in scores.items()}


def solve_level(total_at: Callable[[float], float], target: float, low: float, high: float,
                iterations: int = 100) -> float:
    """The level in [low, high] at which the non-decreasing `total_at(level)` reaches `target`
    (bisection; the returned level gives at least the target)."""
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if total_at(mid) < target else (low, mid)
    return high


def settled(plan: Plan, groups: Groups, sparsity: float) -> Plan:
    """The plan as integer counts per matrix that add up to round(sparsity x N) of the N prunable
    weights: a matrix planned at p_m prunes floor(n_m p_m) or one more, the extra weights going to
    the largest fractional parts (ties in pruning order). Each matrix rounding its own count
    instead misses the target by up to half a weight per matrix. Each sparsity is count / n_m."""
    matrices = [m for m in groups.sizes if m in groups.block_of]
    shares = {m: groups.sizes[m] * (plan[m] if m in plan else plan[groups.block_of[m]]) for m in matrices}
    # a share within 1e-9 of an integer is that integer (c / n x n need not give c back exactly)
    counts = {m: math.floor(s + 1e-9) for m, s in shares.items()}
    extra = round(sparsity * sum(groups.sizes[m] for m in matrices)) - sum(counts.values())
    if not 0 <= extra <= len(matrices):
        raise RuntimeError(f"the plan's counts ({sum(counts.values())} weights) cannot reach sparsity {sparsity:g}")
    by_fraction = sorted(matrices, key=lambda m: counts[m] - shares[m])  # stable: ties stay in pruning order
    for m in by_fraction[:extra]:
        counts[m] += 1
    return {m: c / groups.sizes[m] for m, c in counts.items()}
