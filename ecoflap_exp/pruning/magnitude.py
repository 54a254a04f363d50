"""Magnitude pruning: drop the smallest |W|, no calibration data; per whole matrix by default (the
reference codes' layer-wise magnitude baseline) or per output row."""

from __future__ import annotations

import torch

from ecoflap_exp.input_stats import InputStats
from ecoflap_exp.models.seam import Group, Tower
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import NM, Counting, RowMetric, select_mask


class MagnitudePruner(LocalPruner):
    name = "magnitude"
    needs_inputs = False

    def __init__(self, group: Group | None = "matrix", count: Counting = "exact"):
        super().__init__(count)
        self.group: Group = group or "matrix"

    def group_for(self, tower: Tower) -> Group:
        return self.group

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        metric = RowMetric.over(weight, lambda rows: rows.abs().float())
        mask = select_mask(metric, sparsity, group or self.group, nm, self.count)
        weight.masked_fill_(mask, 0)
        return mask
