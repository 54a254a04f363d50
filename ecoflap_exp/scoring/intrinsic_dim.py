"""Intrinsic dimension (ID) of each block's output representations as its importance.

Estimators, in torch (so they run where the model runs):
- `twonn`: Facco et al. 2017 as scikit-dimension fits it. mu = r2 / r1 from each point's two
  nearest neighbours; sort mu, F_i = i / N; least-squares slope through the origin of
  -log(1 - F) on log mu over the smallest (1 - discard_fraction) N values.
- `mle`: maximum likelihood on the same ratios, (N - 1) / sum log mu (dadapy's unbiased form).
- `twonn_blocks`: ID_VL_Pruning's variant: no discard (all points but the largest two), points
  with r1 == r2 dropped, averaged over random splits into b = 1..20 equal blocks.
Exact duplicates are dropped first, keeping one copy, and so are points whose nearest distance
still rounds to zero, so they never give inf.

Representations of a sample: `flatten` (its whole token sequence as one vector, the paper's),
`mean` (mean over tokens) or `cls` (first token). Padding never enters: `mean` averages the real
tokens; `flatten` zeroes the pad positions and pads shorter sequences with zeros to the longest, so
two samples differ only where they hold real tokens.
"""

from __future__ import annotations

import math

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput
from ecoflap_exp.scoring.base import BlockScorer, check_choice, check_granularity, groups
from ecoflap_exp.walk import walk_tower

ESTIMATORS = ("twonn", "mle", "twonn_blocks")
REPRESENTATIONS = ("flatten", "mean", "cls")


def pairwise_distances(X: torch.Tensor) -> torch.Tensor:
    """Euclidean distances in float64 (float32 collapses small distances of long vectors)."""
    X = X.double()
    sq = X.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * X @ X.t()).clamp_min_(0)
    d2.fill_diagonal_(0)
    return d2.sqrt_()


def distinct_distances(X: torch.Tensor) -> torch.Tensor:
    """Distances between the distinct points of X (exact copies kept once: a zero distance
    would make r2 / r1 infinite)."""
    return pairwise_distances(torch.unique(X, dim=0))


def neighbour_ratios(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r1, r2: distances of each point to its nearest and second-nearest other point."""
    D = D.clone()
    D.fill_diagonal_(float("inf"))
    r = torch.topk(D, 2, dim=1, largest=False).values
    nonzero = r[:, 0] > 0  # distinct points can still round to distance 0
    return r[nonzero, 0], r[nonzero, 1]


def twonn_fit(mu: torch.Tensor, discard_fraction: float, drop_last: int = 0) -> float:
    n = mu.numel()
    mu = torch.sort(mu).values
    keep = min(int(n * (1 - discard_fraction)), n - drop_last)
    if keep < 2:
        raise UserError(f"TwoNN needs more distinct points (got {n}); use more calibration samples")
    x = torch.log(mu[:keep])
    F = torch.arange(1, keep + 1, dtype=mu.dtype, device=mu.device) / n
    y = -torch.log1p(-F)
    return float((x * y).sum() / (x * x).sum())


def twonn(X: torch.Tensor, discard_fraction: float = 0.1) -> float:
    r1, r2 = neighbour_ratios(distinct_distances(X))
    return twonn_fit(r2 / r1, discard_fraction)


def mle(X: torch.Tensor) -> float:
    r1, r2 = neighbour_ratios(distinct_distances(X))
    return float((r1.numel() - 1) / torch.log(r2 / r1).sum())


def twonn_blocks(X: torch.Tensor, max_blocks: int = 20, seed: int = 0) -> float:
    """Mean over b = 1..max_blocks of the mean TwoNN of b random disjoint equal subsets."""
    D = distinct_distances(X)
    n = D.shape[0]
    generator = torch.Generator().manual_seed(seed)
    means = []
    for b in range(1, max_blocks + 1):
        size = n // b
        order = torch.randperm(n, generator=generator).to(D.device)
        dims = []
        for k in range(b):
            idx = order[k * size : (k + 1) * size]
            r1, r2 = neighbour_ratios(D[idx][:, idx])
            valid = r1 < r2
            dims.append(twonn_fit(r2[valid] / r1[valid], 0.0, drop_last=2))
        means.append(sum(dims) / len(dims))
    return sum(means) / len(means)


def representation(hidden: torch.Tensor, kind: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, tokens, features) -> (batch, vector) per sample; `mask` (batch, tokens): the real
    tokens (None: all)."""
    if hidden.dim() == 2:
        return hidden
    if kind == "cls":
        return hidden[:, 0]
    if mask is not None:
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0)
    if kind == "flatten":
        return hidden.reshape(hidden.shape[0], -1)
    if mask is None:
        return hidden.mean(1)
    return hidden.sum(1) / mask.sum(1, keepdim=True).to(hidden.dtype)


def stack_flattened(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Flattened sequences of batches padded to different lengths, zero-padded to the longest."""
    width = max(v.shape[1] for v in vectors)
    return torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vectors])


class IntrinsicDimensionScorer(BlockScorer):
    """Score of a block = ID of its outputs on the calibration samples (higher = pruned less).
    With granularity `matrix` every matrix gets the ID of its block's output."""

    name = "id"

    def __init__(self, estimator: str = "twonn", representation: str = "flatten", discard_fraction: float = 0.1,
                 granularity: str = "block", seed: int = 0):
        check_choice("scorer.estimator", estimator, ESTIMATORS)
        check_choice("scorer.representation", representation, REPRESENTATIONS)
        self.estimator = estimator
        self.representation = representation
        self.discard_fraction = discard_fraction
        self.granularity = check_granularity(granularity)
        self.seed = seed

    def estimate(self, X: torch.Tensor) -> float:
        if self.estimator == "mle":
            return mle(X)
        if self.estimator == "twonn_blocks":
            return twonn_blocks(X, seed=self.seed)
        return twonn(X, self.discard_fraction)

    def block_ids(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        ids: dict[str, float] = {}

        def measure(block: Block, outputs: list[BlockInput]) -> None:
            X = stack_flattened([representation(out.hidden, self.representation, out.masks.get("hidden"))
                                 for out in outputs])
            value = self.estimate(X)
            if not math.isfinite(value):
                raise UserError(f"intrinsic dimension of {block.name} is {value}; the block's outputs are degenerate")
            ids[block.name] = value

        with torch.no_grad():
            adapter.model.eval()
            for tower in adapter.towers():
                for _ in walk_tower(adapter, tower, batches, adapter.device, description=f"ID {tower.name}",
                                    after=measure):
                    pass
        return ids

    def scores(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        ids = self.block_ids(adapter, batches)
        if self.granularity == "block":
            return ids
        owner = {m.name: block.name for block in adapter.blocks() for m in block.matrices}
        return {name: ids[owner[name]] for name in groups(adapter, self.granularity)}
