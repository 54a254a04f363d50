"""The local-pruner contract the sequential engine drives."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ecoflap_exp.pruning.masks import NM


class InputStats(ABC):
    """Statistics of one matrix's inputs, accumulated over calibration batches."""

    samples = 0

    @abstractmethod
    def add(self, x: torch.Tensor) -> None:
        """x: the matrix's input, any leading shape, last dimension = input columns."""

    def count_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Count x's samples (its leading dimension when it has one beyond tokens x columns) and
        return x as float (tokens, cols) with the factor that rescales a running mean over the
        samples seen so far to the new count (the reference codes' per-sample normalisation)."""
        batch = x.shape[0] if x.dim() > 2 else 1
        previous = self.samples
        self.samples += batch
        return x.reshape(-1, x.shape[-1]).float(), previous / self.samples


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
