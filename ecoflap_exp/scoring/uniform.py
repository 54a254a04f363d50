"""Uniform sparsity (plain Wanda / SparseGPT / magnitude): score = parameter count.

The water-filling allocation gives a group extra kept weights in proportion to its score, so
scores proportional to group size give every group exactly the target sparsity.
"""

from __future__ import annotations

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.scoring.base import BlockScorer
from ecoflap_exp.tower_outputs import TowerOutputs


class UniformScorer(BlockScorer):
    non_uniform = False

    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        return {block.name: float(block.numel) for block in adapter.blocks()}
