"""Products of scores, e.g. ECoFLaP x intrinsic dimension.

score_g = prod_k  s_k(g) / mean_{h in tower(g)} s_k(h)

Each factor is divided by its mean within the group's tower first, so factors on different
scales (a loss sensitivity, a dimension) weigh equally and no factor's units dominate.
"""

from __future__ import annotations

from collections import defaultdict

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.scoring.base import BlockScorer


class ProductScorer(BlockScorer):
    def __init__(self, factors: list[BlockScorer]):
        if len(factors) < 2:
            raise UserError("scorer.factors needs at least two scorers to combine")
        self.factors = list(factors)
        self.name = "x".join(f.name for f in self.factors)

    def scores(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        owner = Groups.of(adapter).towers
        combined: dict[str, float] | None = None
        for factor in self.factors:
            scores = factor.scores(adapter, batches)
            tower_sum: dict[str, float] = defaultdict(float)
            tower_count: dict[str, int] = defaultdict(int)
            for g, s in scores.items():
                tower_sum[owner[g]] += s
                tower_count[owner[g]] += 1
            normalised = {}
            for g, s in scores.items():
                mean = tower_sum[owner[g]] / tower_count[owner[g]]
                normalised[g] = s / mean if mean > 0 else 0.0
            if combined is not None and set(combined) != set(normalised):
                raise UserError("combined scorers must use the same granularity")
            combined = normalised if combined is None else {g: combined[g] * normalised[g] for g in combined}
        assert combined is not None
        return combined
