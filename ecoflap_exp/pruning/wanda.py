"""Wanda (Sun et al. 2024): metric |W_ij| * ||X_j||_2, compared per output row by default."""

from __future__ import annotations

import torch

from ecoflap_exp.pruning.base import InputStats, LocalPruner
from ecoflap_exp.pruning.masks import NM, Group, select_mask


class ColumnNorms(InputStats):
    """Mean over calibration samples of the squared L2 norm of each input column."""

    def __init__(self, cols: int, device: torch.device):
        self.sq_norms = torch.zeros(cols, device=device, dtype=torch.float32)

    def add(self, x: torch.Tensor) -> None:
        x, rescale = self.count_batch(x)
        self.sq_norms.mul_(rescale).add_(x.pow(2).sum(0) / self.samples)


class WandaPruner(LocalPruner):
    def __init__(self, group: Group = "row"):
        self.group = group

    def new_stats(self, cols: int, device: torch.device) -> ColumnNorms:
        return ColumnNorms(cols, device)

    def prune(self, weight: torch.Tensor, stats: InputStats | None, count: int, nm: NM | None) -> torch.Tensor:
        assert isinstance(stats, ColumnNorms)
        metric = weight.abs().float() * stats.sq_norms.sqrt()
        mask = select_mask(metric, count, self.group, nm)
        weight[mask] = 0
        return mask
