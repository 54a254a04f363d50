"""The local-pruner contract the sequential engine drives."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ecoflap_exp.input_stats import InputStats
from ecoflap_exp.models.seam import Block, Group, PrunableMatrix, Tower
from ecoflap_exp.options import Typed
from ecoflap_exp.pruning.masks import NM, Counting


class LocalPruner(Typed, ABC):
    """Prunes one matrix at a time to its planned sparsity, from its weights and input statistics.

    `count`: `exact` (default) prunes round(rows x cols x sparsity) weights of every matrix
    (N:M: its pattern); `reference` counts as the reference codes do (Wanda per row: int(cols x p)
    per row; a threshold over a whole matrix or SparseGPT block: every weight <= the value at
    index int(n x p), so at least one more), to reproduce their masks bit for bit.
    """

    option_group = "pruner"

    #: the name the record uses for this pruner's settings (e.g. `wanda_group`)
    name: str = ""
    #: False for pruners that need no calibration inputs (the engine then skips the stats pass).
    needs_inputs: bool = True

    def __init__(self, count: Counting = "exact"):
        self.count = count

    def new_stats(self, cols: int, device: torch.device) -> InputStats:
        """Empty statistics of a matrix with `cols` input columns (pruners that need inputs)."""
        raise NotImplementedError(f"{type(self).__name__} needs no input statistics")

    def group_for(self, tower: Tower) -> Group | None:
        """The comparison group this pruner uses in `tower` (None: it has no groups)."""
        return None

    def for_matrix(self, block: Block, matrix: PrunableMatrix) -> LocalPruner:
        """The pruner that prunes `matrix` of `block`: this one, unless a pruner treats some
        matrices by their name (DSnoT leaves the sub-layers it skips at its initial mask)."""
        return self

    def prepare(self, weight: torch.Tensor, stats: InputStats | None) -> None:
        """Changes to the weights that come before any mask is chosen (SparseGPT zeroes the
        weights of input columns that are always zero); the engine counts zeros after it. Most
        pruners change nothing here."""
        return None

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        """Zero the weights the plan's `sparsity` (or the N:M pattern) asks for, in place, and
        return the mask (True = pruned). Pruners that compensate (SparseGPT) also update the kept
        weights."""
