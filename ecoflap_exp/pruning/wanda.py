"""Wanda (Sun et al. 2024): metric |W_ij| * ||X_j||_2, compared per output row or per whole matrix.

`group=null` (the default) takes each tower's own choice, the official code's: BLIP-2's EVA ViT
and the ViT classifiers per whole matrix, T5, CLIP and LLaMA per output row; `row` or `matrix`
overrides every tower.
"""

from __future__ import annotations

import torch

from ecoflap_exp.input_stats import ColumnNorms, InputStats, wanda_metric
from ecoflap_exp.models.seam import Group, Tower
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import NM, Counting, RowMetric, select_mask


class WandaPruner(LocalPruner):
    name = "wanda"

    def __init__(self, group: Group | None = None, count: Counting = "exact"):
        super().__init__(count)
        self.group = group

    def new_stats(self, cols: int, device: torch.device) -> ColumnNorms:
        return ColumnNorms(cols, device)

    def group_for(self, tower: Tower) -> Group:
        return self.group or tower.wanda_group

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        assert stats is not None
        # the metric a few rows at a time where the group allows (masks.RowMetric): never a second
        # fp32 copy of the matrix beside the weights
        metric = RowMetric.over(weight, lambda rows: wanda_metric(rows, stats))
        mask = select_mask(metric, sparsity, group or "row", nm, self.count)
        weight.masked_fill_(mask, 0)
        return mask
