"""ECoFLaP first-order score (GradMagAbs): per weight |W| * mean over batches of |dL/dW|.

The mean of absolute per-batch gradients (not |mean gradient|), as the official code. Since
sum_ij |W_ij| * mean_b |g_bij| = mean_b sum_ij |W_ij| |g_bij|, each matrix's score is reduced to
a scalar as soon as its gradient is accumulated and the gradient is freed at once: beyond a
plain backward pass, memory holds one matrix's gradient at a time and no accumulation buffers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, PrunableMatrix, Redraw
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track
from ecoflap_exp.scoring.base import Aggregate, BlockScorer, Granularity, aggregate, check_granularity
from ecoflap_exp.tower_outputs import TowerOutputs


class FirstOrderScorer(BlockScorer):
    name = "ecoflap-first"

    def __init__(self, granularity: Granularity = "block", aggregate: Aggregate = "sum",
                 num_samples: Count | None = None):
        self.granularity, self.aggregate = check_granularity(granularity), aggregate
        self.num_samples = num_samples

    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        batches = self.reads(batches, extended)
        per_matrix = first_order_matrix_scores(adapter, batches)
        return aggregate(adapter, per_matrix, self.granularity, self.aggregate)


def backward_passes(adapter: ModelAdapter, batches: list[Batch], on_gradient: Callable[[nn.Parameter], None],
                    description: str) -> None:
    """One backward pass of the calibration loss per batch, with gradients kept only for the
    prunable matrices' parameters; `on_gradient(param)` runs as each one's gradient is accumulated
    (it may read and free `param.grad`). Every parameter's requires_grad is restored after."""
    model = adapter.model
    prunable = {m.param for m in adapter.matrices()}
    was_trainable = {p: p.requires_grad for p in model.parameters()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(p in prunable)
        handles = [p.register_post_accumulate_grad_hook(on_gradient) for p in prunable]
        model.eval()
        for batch in track(batches, description, total=len(batches)):
            loss = adapter.loss(batch)
            if not math.isfinite(loss.item()):
                raise UserError(f"{description}: the calibration loss is {loss.item()}; check the calibration data "
                                f"and model dtype (fp16 overflow?)")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, trainable in was_trainable.items():
            p.requires_grad_(trainable)
            p.grad = None


def first_order_matrix_scores(adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
    by_param: dict[nn.Parameter, list[PrunableMatrix]] = defaultdict(list)
    for m in adapter.matrices():
        by_param[m.param].append(m)
    totals = {m.name: 0.0 for ms in by_param.values() for m in ms}

    def reduce_and_free(param: nn.Parameter) -> None:
        for m in by_param[param]:
            totals[m.name] += float((m.weight.abs().float() * m.part(param.grad).abs().float()).sum())
        param.grad = None

    backward_passes(adapter, batches, reduce_and_free, "first-order scores")
    return {name: total / len(batches) for name, total in totals.items()}
