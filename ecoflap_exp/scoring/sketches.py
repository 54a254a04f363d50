"""Per-matrix sketches of Wanda's metric |W_ij| ||X_j|| on the dense model, for allocations that
rank weights globally (allocation=global): `quantiles` order statistics of each matrix's metric,
so the whole model's ranking fits in memory one block at a time."""

from __future__ import annotations

import torch

from ecoflap_exp.allocation.base import Sketches
from ecoflap_exp.input_stats import ColumnNorms, wanda_metric
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.walk import collect_stats, walk_tower


@torch.no_grad()
def metric_sketches(adapter: ModelAdapter, batches: list[Batch], quantiles: int) -> Sketches:
    adapter.model.eval()
    sketches: Sketches = {}
    for tower in adapter.towers():
        for block, inputs in walk_tower(adapter, tower, batches, adapter.device, description=f"ranking {tower.name}"):
            for m, norms in collect_stats(tower, block, inputs, ColumnNorms, adapter.device).items():
                metric = wanda_metric(m.weight, norms).flatten()
                order = torch.linspace(0, metric.numel() - 1, min(quantiles, metric.numel()))
                sketches[m.name] = metric.sort().values[order.round().long()].double().cpu().numpy()
    return sketches
