"""After pruning: does every matrix hold the planned number of zeros, and is every weight finite?

Checked on the weights themselves: with exact counting a matrix must have at least its planned
count of zeros, and at most that plus the zeros it already had (a weight that was exactly zero
before pruning may be kept and stay zero). With the reference codes' counting the count depends
on the data (ties at the threshold), so the pruner's own count stands in for the plan there.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.pruning.engine import MatrixReport, Plan, planned_sparsity
from ecoflap_exp.pruning.masks import NM, planned_prune_count


def verify(adapter: ModelAdapter, plan: Plan, nm: NM | None, reports: list[MatrixReport],
           exact: bool = True, overall: float | None = None) -> dict[str, Any]:
    """Achieved sparsity overall, per tower, block and matrix; RuntimeError when a matrix misses its
    plan, or when `overall` is given (a global plan, as iterative pruning's) and the plan's counts
    do not add up to exactly that fraction of the prunable weights."""
    by_name = {r.name: r for r in reports}
    per_matrix: dict[str, float] = {}
    block_zeros: dict[str, int] = defaultdict(int)
    block_sizes: dict[str, int] = defaultdict(int)
    tower_zeros: dict[str, int] = defaultdict(int)
    tower_sizes: dict[str, int] = defaultdict(int)
    problems = []
    planned_total = 0
    masks = hashlib.sha1()  # of every matrix's zero pattern, in pruning order: same seed, same masks
    for tower in adapter.towers():
        for block in tower.blocks:
            for m in block.matrices:
                weight = m.weight
                rows, cols = weight.shape
                planned = planned_prune_count(rows, cols, planned_sparsity(plan, block, m), nm)
                planned_total += planned
                is_zero = weight == 0
                zeros = int(is_zero.sum())
                masks.update(m.name.encode())
                masks.update(np.packbits(is_zero.flatten().cpu().numpy()).tobytes())
                report = by_name.get(m.name)
                if report is None:
                    if planned:
                        problems.append(f"{m.name}: planned {planned} pruned weights but never pruned")
                else:
                    if not exact:
                        planned = report.pruned
                    if not planned <= zeros <= planned + report.zeros_before:
                        problems.append(f"{m.name}: {zeros} zeros, planned {planned}")
                if not torch.isfinite(weight).all():
                    problems.append(f"{m.name}: NaN/inf weights")
                per_matrix[m.name] = zeros / weight.numel()
                block_zeros[block.name] += zeros
                block_sizes[block.name] += weight.numel()
                tower_zeros[tower.name] += zeros
                tower_sizes[tower.name] += weight.numel()
    total = sum(block_sizes.values())
    if overall is not None and planned_total != round(overall * total):
        problems.append(f"the plan prunes {planned_total} of {total} weights, not the target's "
                        f"{round(overall * total)} (sparsity {overall:g})")
    if problems:
        raise RuntimeError("pruned model does not match the plan:\n  " + "\n  ".join(problems[:20]))
    bad_params = [n for n, p in adapter.model.named_parameters() if not torch.isfinite(p).all()]
    if bad_params:
        raise UserError(f"the pruned model has NaN/inf parameters ({', '.join(bad_params[:5])}); "
                        f"lower the sparsity or check the calibration data")
    return {
        "overall": sum(block_zeros.values()) / total if total else 0.0,
        "prunable_params": total,
        "per_tower": {t: tower_zeros[t] / tower_sizes[t] for t in tower_sizes},
        "per_block": {b: block_zeros[b] / block_sizes[b] for b in block_sizes},
        "per_matrix": per_matrix,
        "masks_sha1": masks.hexdigest(),
    }
