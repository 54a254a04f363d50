"""Per-matrix sketches of a per-weight score on the dense model, for allocations that rank weights
globally (allocation=global): `quantiles` order statistics of each matrix's scores, each standing
for the weights ranked between it and the one before, so the whole model's ranking fits in memory
one matrix at a time (with quantiles >= a matrix's size, its sketch is exact).

Base scores (the ID paper's, and Wanda's):
- `magnitude`: |W_ij| (no data);
- `taylor`: |W_ij * mean over the calibration batches of dL/dW_ij| (one backward pass per batch,
  gradients of the prunable matrices summed in fp32);
- `wanda`: |W_ij| ||X_j||_2 (one walk over the calibration set).
"""

from __future__ import annotations

import torch
from torch import nn

from ecoflap_exp.allocation.base import Sketch, Sketches
from ecoflap_exp.input_stats import ColumnNorms, wanda_metric
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.scoring.first import backward_passes
from ecoflap_exp.tower_outputs import TowerOutputs
from ecoflap_exp.walk import collect_stats, walk_tower


def sketch(scores: torch.Tensor, quantiles: int) -> Sketch:
    ordered = scores.flatten().float().sort().values
    n = ordered.numel()
    positions = torch.linspace(0, n - 1, min(quantiles, n)).round().long()
    counts = torch.diff(positions, prepend=torch.tensor([-1]))
    return Sketch(ordered[positions].double().cpu().numpy(), counts.cpu().numpy())


@torch.no_grad()
def wanda_sketches(adapter: ModelAdapter, batches: list[Batch], quantiles: int, outputs: TowerOutputs | None = None
                   ) -> Sketches:
    sketches: Sketches = {}
    for tower in adapter.towers():
        for block, inputs in walk_tower(adapter, tower, batches, adapter.device, description=f"ranking {tower.name}",
                                        outputs=outputs):
            for m, norms in collect_stats(tower, block, inputs, ColumnNorms, adapter.device).items():
                sketches[m.name] = sketch(wanda_metric(m.weight, norms), quantiles)
    return sketches


def taylor_sketches(adapter: ModelAdapter, batches: list[Batch], quantiles: int) -> Sketches:
    sums: dict[nn.Parameter, torch.Tensor] = {}

    def accumulate(param: nn.Parameter) -> None:
        if param not in sums:
            sums[param] = torch.zeros_like(param, dtype=torch.float32)
        sums[param] += param.grad.float()
        param.grad = None

    backward_passes(adapter, batches, accumulate, "Taylor scores")
    return {m.name: sketch((m.weight.float() * m.part(sums[m.param]) / len(batches)).abs(), quantiles)
            for m in adapter.matrices()}


def weight_sketches(adapter: ModelAdapter, batches: list[Batch], base_score: str, quantiles: int,
                    outputs: TowerOutputs | None = None) -> Sketches:
    """Every matrix's sketch of `base_score`; `outputs` serves the towers the wanda walk's captures
    read (None: every tower is computed)."""
    adapter.model.eval()
    if base_score == "magnitude":
        return {m.name: sketch(m.weight.abs(), quantiles) for m in adapter.matrices()}
    if base_score == "taylor":
        return taylor_sketches(adapter, batches, quantiles)
    return wanda_sketches(adapter, batches, quantiles, outputs)
