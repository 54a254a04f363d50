"""Global ranking (the intrinsic-dimension paper's use of ID): one threshold over every prunable
weight of the score |W_ij| * ||X_j||_2 * s_g, where s_g is the score of the weight's group (its
block's or matrix's ID with scorer=id). Each matrix's sparsity is the share of its weights below
the threshold; the local pruner then prunes each matrix at that sparsity.

The threshold is found on per-matrix quantile sketches (`quantiles` order statistics each,
interpolated), not on all weights at once, so memory stays at one block's statistics; the
sparsities average exactly to the target. `max_sparsity` does not apply: sparsities emerge from
the ranking.
"""

from __future__ import annotations

import numpy as np
import torch

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.pruning.engine import collect_stats, walk_tower
from ecoflap_exp.pruning.wanda import ColumnNorms, WandaPruner
from ecoflap_exp.scoring.allocate import Allocation, Plan


class GlobalRanking(Allocation):
    def __init__(self, quantiles: int = 4096):
        self.quantiles = quantiles

    @torch.no_grad()
    def plan(self, adapter: ModelAdapter, batches: list[Batch], scores: dict[str, float], sparsity: float,
             max_sparsity: float) -> Plan:
        sketches: dict[str, np.ndarray] = {}
        sizes: dict[str, int] = {}
        adapter.model.eval()
        for tower in adapter.towers():
            walk = walk_tower(adapter, tower, batches, adapter.device, description=f"ranking {tower.name}")
            for block, inputs in walk:
                stats = collect_stats(tower, block, inputs, WandaPruner(), adapter.device)
                for m in block.matrices:
                    norms = stats[m]
                    assert isinstance(norms, ColumnNorms)
                    group_score = scores[m.name] if m.name in scores else scores[block.name]
                    metric = (m.weight.abs().float() * norms.sq_norms.sqrt() * group_score).flatten()
                    order = torch.linspace(0, metric.numel() - 1, min(self.quantiles, metric.numel()))
                    sketches[m.name] = metric.sort().values[order.round().long()].double().cpu().numpy()
                    sizes[m.name] = metric.numel()

        def fractions(threshold: float) -> dict[str, float]:
            return {name: float(np.interp(threshold, q, np.linspace(0, 1, len(q)))) for name, q in sketches.items()}

        total = sum(sizes.values())
        low = min(float(q[0]) for q in sketches.values())
        high = max(float(q[-1]) for q in sketches.values())
        for _ in range(100):
            mid = (low + high) / 2
            pruned = sum(f * sizes[n] for n, f in fractions(mid).items())
            low, high = (mid, high) if pruned < sparsity * total else (low, mid)
        plan = fractions(high)
        # the bisection's last step leaves a sliver off the exact total: spread it evenly
        excess = (sum(f * sizes[n] for n, f in plan.items()) - sparsity * total) / total
        return {n: min(max(f - excess, 0.0), 1.0) for n, f in plan.items()}
