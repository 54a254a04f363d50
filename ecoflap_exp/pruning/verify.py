"""After pruning: does every matrix hold the planned number of zeros, and is every weight finite?

Checked on the weights themselves: with exact counting a matrix must have at least its planned
count of zeros, and at most that plus the zeros it already had (a weight that was exactly zero
before pruning may be kept and stay zero). With the reference codes' counting the count depends
on the data (ties at the threshold), so the pruner's own count stands in for the plan there.

What it reads: each prunable matrix once (its zero mask, which gives the count and the hash, and its
minimum and maximum, which any NaN or inf reaches); the parameters outside those matrices only when
the caller says something could have written them (`others`): after fine-tuning, whose training
steps write every trainable parameter, but not after a one-shot prune, whose pruners write only the
matrix they prune (SparseGPT's `prepare` and weight update included) while the load's check
(oneshot.check_weights, before every prune) saw the rest.
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


def finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, from the tensor's minimum and maximum: a NaN anywhere makes
    both NaN (torch.aminmax propagates it), +inf the maximum and -inf the minimum. One vectorised
    reduction, where isfinite(...).all() writes and reads a mask as large as the tensor."""
    if tensor.numel() == 0:  # aminmax has no answer there, and nothing is non-finite
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def verify(adapter: ModelAdapter, plan: Plan, nm: NM | None, reports: list[MatrixReport],
           exact: bool = True, overall: float | None = None, *, others: bool = True) -> dict[str, Any]:
    """Achieved sparsity overall, per tower, block and matrix; RuntimeError when a matrix misses its
    plan or holds NaN/inf, or when `overall` is given (a global plan, as iterative pruning's) and the
    plan's counts do not add up to exactly that fraction of the prunable weights. `others`: also
    check every parameter outside the prunable matrices (embeddings, norms, heads) for NaN/inf, a
    UserError; pass False only where nothing wrote them since the load's check."""
    by_name = {r.name: r for r in reports}
    per_matrix: dict[str, float] = {}
    block_zeros: dict[str, int] = defaultdict(int)
    block_sizes: dict[str, int] = defaultdict(int)
    tower_zeros: dict[str, int] = defaultdict(int)
    tower_sizes: dict[str, int] = defaultdict(int)
    problems = []
    planned_total = 0
    masks = hashlib.sha1()  # of every matrix's zero pattern, in pruning order: same seed, same masks
    read: dict[int, int] = defaultdict(int)  # id(parameter) -> its elements the matrix loop reads
    for tower in adapter.towers():
        for block in tower.blocks:
            for m in block.matrices:
                weight = m.weight
                rows, cols = weight.shape
                read[id(m.param)] += weight.numel()
                planned = planned_prune_count(rows, cols, planned_sparsity(plan, block, m), nm)
                planned_total += planned
                # the mask once, on the CPU (where the hash reads it): numpy counts a bool array
                # at memory speed, where torch's bool sum widens every element to int64 first
                is_zero = (weight == 0).flatten().cpu().numpy()
                zeros = int(np.count_nonzero(is_zero))
                masks.update(m.name.encode())
                masks.update(np.packbits(is_zero).tobytes())
                report = by_name.get(m.name)
                if report is None:
                    if planned:
                        problems.append(f"{m.name}: planned {planned} pruned weights but never pruned")
                else:
                    if not exact:
                        planned = report.pruned
                    if not planned <= zeros <= planned + report.zeros_before:
                        problems.append(f"{m.name}: {zeros} zeros, planned {planned}")
                if not finite(weight):
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
    if others:
        # a parameter that holds matrices is skipped only when they cover it whole (a fused
        # projection whose matrices are row slices of it may leave rows out)
        bad_params = [name for name, p in adapter.model.named_parameters()
                      if read.get(id(p), 0) < p.numel() and not finite(p.detach())]
        if bad_params:
            raise UserError(f"the model has NaN/inf parameters outside the pruned matrices "
                            f"({', '.join(bad_params[:5])}): a training step wrote them; lower finetune.lr or "
                            f"check the training data")
    return {
        "overall": sum(block_zeros.values()) / total if total else 0.0,
        "prunable_params": total,
        "per_tower": {t: tower_zeros[t] / tower_sizes[t] for t in tower_sizes},
        "per_block": {b: block_zeros[b] / block_sizes[b] for b in block_sizes},
        "per_matrix": per_matrix,
        "masks_sha1": masks.hexdigest(),
    }
