"""Magnitude pruning: drop the smallest |W|, no calibration data."""

from __future__ import annotations

import torch

from ecoflap_exp.pruning.base import InputStats, LocalPruner
from ecoflap_exp.pruning.masks import NM, Group, select_mask


class MagnitudePruner(LocalPruner):
    needs_inputs = False

    def __init__(self, group: Group = "matrix"):
        self.group = group

    def prune(self, weight: torch.Tensor, stats: InputStats | None, count: int, nm: NM | None) -> torch.Tensor:
        mask = select_mask(weight.abs().float(), count, self.group, nm)
        weight[mask] = 0
        return mask
