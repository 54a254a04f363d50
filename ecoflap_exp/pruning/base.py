"""The local-pruner contract the sequential engine drives."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ecoflap_exp.pruning.masks import NM


class InputStats(ABC):
    """Statistics of one matrix's inputs, accumulated over calibration batches."""

    @abstractmethod
    def add(self, x: torch.Tensor) -> None:
        """x: the matrix's input, any leading shape, last dimension = input columns."""


class LocalPruner(ABC):
    """Prunes one matrix at a time to an exact count, from its weights and input statistics."""

    #: False for pruners that need no calibration inputs (the engine then skips the stats pass).
    needs_inputs: bool = True

    def new_stats(self, cols: int, device: torch.device) -> InputStats | None:
        return None

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: InputStats | None, count: int, nm: NM | None) -> torch.Tensor:
        """Zero `count` weights of `weight` in place (or the N:M pattern) and return the mask
        (True = pruned). Pruners that compensate (SparseGPT) also update the kept weights."""
