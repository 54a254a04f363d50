"""Statistics of a matrix's inputs over the calibration set, and Wanda's metric built on them
(shared by the Wanda pruner, OWL's outlier ratios and global ranking's sketches)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class InputStats(ABC):
    """Statistics of one matrix's inputs, accumulated over calibration batches as a running mean
    over samples (the reference codes' normalisation by batch entries, not tokens)."""

    samples = 0

    def add(self, tokens: torch.Tensor, samples: int) -> None:
        """tokens: (real tokens, input columns) of `samples` calibration samples."""
        previous = self.samples
        self.samples += samples
        self.accumulate(tokens.float(), previous / self.samples)

    @abstractmethod
    def accumulate(self, tokens: torch.Tensor, rescale: float) -> None:
        """Scale the mean so far by `rescale` (old sample count / new) and add the new tokens'
        share (their sum over `self.samples`)."""


class ColumnNorms(InputStats):
    """Mean over calibration samples of the squared L2 norm of each input column, accumulated as
    locuslab/wanda's WrappedGPT.add_batch does, bit for bit: per batch, `torch.norm(inp.t(), p=2,
    dim=1) ** 2` of the fp32 tokens (a sum of squares rounds differently, and a near-tie in the
    ranking then flips)."""

    def __init__(self, cols: int, device: torch.device):
        self.sq_norms = torch.zeros(cols, device=device, dtype=torch.float32)

    def accumulate(self, tokens: torch.Tensor, rescale: float) -> None:
        self.sq_norms.mul_(rescale)
        self.sq_norms += torch.norm(tokens.t(), p=2, dim=1) ** 2 / self.samples


def wanda_metric(weight: torch.Tensor, norms: InputStats) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 in fp32 (Wanda's importance of each weight)."""
    assert isinstance(norms, ColumnNorms)
    return weight.abs().float() * norms.sq_norms.sqrt()
