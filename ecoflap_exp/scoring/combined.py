"""Products of scores, e.g. ECoFLaP x intrinsic dimension.

Every scorer's group score is a sum over the group's weights (ECoFLaP's `sum` aggregation; the ID
scorer's is ID x size), so its score per weight is s_k(g) / n_g. The product multiplies the
factors' scores per weight and turns the result back into a sum over the group:

    normalise=none (default):       score_g = n_g * prod_k s_k(g) / n_g
    normalise=tower_mean:           score_g = prod_k s_k(g) / mean_{h in tower(g)} s_k(h)

With two factors (zeroth x ID) the default is zeroth_g x ID_g: the raw ID, whose differences
between towers are what the ID paper is about, and no size bias (equal IDs give zeroth's plan).
`tower_mean` divides each factor by its mean within the group's tower first (factors on different
scales weigh equally; the vision-versus-language difference of each factor is removed).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.scoring.base import BlockScorer
from ecoflap_exp.tower_outputs import TowerOutputs

Normalisation = Literal["none", "tower_mean"]


class ProductScorer(BlockScorer):
    def __init__(self, factors: list[BlockScorer], normalise: Normalisation = "none"):
        if len(factors) < 2:
            raise UserError("scorer.factors needs at least two scorers to combine")
        self.factors = list(factors)
        self.normalise = normalise
        self.name = "x".join(f.name for f in self.factors)

    @property
    def samples_needed(self) -> int | None:
        return max((f.samples_needed or 0 for f in self.factors), default=0) or None

    def check_samples(self, pruner_samples: int) -> None:
        for factor in self.factors:
            factor.check_samples(pruner_samples)

    def sample_counts(self) -> dict[str, int]:
        return {key.replace("scorer.", f"scorer.factors.{i}.", 1): n
                for i, f in enumerate(self.factors) for key, n in f.sample_counts().items()}

    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        groups = Groups.of(adapter)
        factors = [factor.scores(adapter, batches, extended, redraw, outputs) for factor in self.factors]
        if any(set(f) != set(factors[0]) for f in factors):
            raise UserError("combined scorers must use the same granularity")
        self.info = {k: v for factor in self.factors for k, v in factor.info.items()}
        if self.normalise == "none":
            out = {}
            for g in factors[0]:
                density = 1.0
                for f in factors:
                    density *= f[g] / groups.sizes[g]
                out[g] = density * groups.sizes[g]
            return out
        combined = dict.fromkeys(factors[0], 1.0)
        for scores in factors:
            total: dict[str, float] = defaultdict(float)
            count: dict[str, int] = defaultdict(int)
            for g, s in scores.items():
                total[groups.towers[g]] += s
                count[groups.towers[g]] += 1
            for g, s in scores.items():
                mean = total[groups.towers[g]] / count[groups.towers[g]]
                combined[g] *= s / mean if mean > 0 else 0.0
        return combined
