"""OWL's layer outlier ratio (Yin et al. 2024) as block scores, for OwlAllocation.

On the dense model, for every block: the Wanda metric |W_ij| * ||X_j||_2 of each of its matrices;
an outlier is an entry above M times its matrix's mean metric; the block's score is its share of
outliers over all its weights.
"""

from __future__ import annotations

import torch

from ecoflap_exp.input_stats import ColumnNorms, wanda_metric
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.options import PositiveFloat
from ecoflap_exp.scoring.base import BlockScorer
from ecoflap_exp.tower_outputs import TowerOutputs
from ecoflap_exp.walk import collect_stats, walk_tower


class OutlierRatioScorer(BlockScorer):
    name = "owl"

    def __init__(self, outlier_factor: PositiveFloat = 5.0):
        self.outlier_factor = outlier_factor

    @torch.no_grad()
    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        adapter.model.eval()
        ratios = {}
        for tower in adapter.towers():
            for block, inputs in walk_tower(adapter, tower, batches, adapter.device, description=f"OWL {tower.name}",
                                            outputs=outputs):
                outliers = 0
                for m, norms in collect_stats(tower, block, inputs, ColumnNorms, adapter.device).items():
                    metric = wanda_metric(m.weight, norms)
                    outliers += int((metric > self.outlier_factor * metric.mean()).sum())
                ratios[block.name] = outliers / block.numel
        return ratios
