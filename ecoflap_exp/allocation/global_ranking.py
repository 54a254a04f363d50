"""Global ranking, the ID paper's pruning rule: one threshold over every prunable weight's score
S_ij = base score x ID of its matrix (the raw per-matrix ID, no normalisation: only ratios of IDs
across matrices matter), the lowest round(p N) of all N weights pruned.

- `base_score`: `magnitude` |w|, `taylor` |w * mean g| (the reference's Taylor), or `wanda`
  |w| ||x||; sketched per matrix by the scoring step (scoring/sketches.py).
- `use_id`: multiply by the scorer's score per weight (a group's score / its size: with
  scorer=id, the raw ID of the matrix or block; with scorer=uniform, 1); false is the plain
  global Magnitude / Taylor / Wanda baseline.
- Each matrix's sparsity is its share of the pruned weights, an exact count (the counts sum to
  round(p N) exactly), held at `max_sparsity` at most (the threshold then rises for the others).
  The local pruner then prunes each matrix at its sparsity: pruner=magnitude group=matrix with
  base_score=magnitude prunes exactly the globally lowest weights.
- Biases are not pruned (the reference also prunes them; they are a tiny share of the weights).
"""

from __future__ import annotations

import math

import numpy as np

from ecoflap_exp.allocation.base import Allocation, BaseScore, Groups, Sketches
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Plan
from ecoflap_exp.options import Count


class GlobalRanking(Allocation):
    def __init__(self, base_score: BaseScore = "wanda", use_id: bool = True, quantiles: Count = 4096):
        if quantiles < 2:
            raise UserError(f"allocation.quantiles={quantiles} must be >= 2 (order statistics per matrix)")
        self.name = f"global-{base_score}"
        self.sketch_score = base_score
        self.sketch_quantiles = quantiles
        self.use_id = self.reads_scores = use_id

    def plan(self, scores: dict[str, float], groups: Groups, sparsity: float, max_sparsity: float,
             sketches: Sketches | None = None) -> Plan:
        if sketches is None:
            raise ValueError("global ranking plans from the scoring step's sketches")
        names = list(sketches)
        values, counts, owner = [], [], []
        for i, m in enumerate(names):
            group = m if m in scores else groups.block_of[m]
            density = scores[group] / groups.sizes[group] if self.use_id else 1.0
            values.append(sketches[m].values * density)
            counts.append(sketches[m].counts)
            owner.append(np.full(len(sketches[m].values), i))
        order = np.argsort(np.concatenate(values), kind="stable")
        point_counts = np.concatenate(counts)[order].tolist()
        point_owner = np.concatenate(owner)[order].tolist()
        sizes = [groups.sizes[m] for m in names]
        caps = [math.floor(max_sparsity * n + 1e-9) for n in sizes]
        remaining = round(sparsity * sum(sizes))
        taken = [0] * len(names)
        for count, i in zip(point_counts, point_owner, strict=True):  # lowest scores first
            take = min(count, caps[i] - taken[i], remaining)
            taken[i] += take
            remaining -= take
            if remaining == 0:
                break
        return {m: t / n for m, t, n in zip(names, taken, sizes, strict=True)}
