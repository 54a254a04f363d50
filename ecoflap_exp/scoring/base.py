"""Block scorers: one non-negative importance score per group (higher = pruned less).

A group is a block (granularity `block`, ECoFLaP's setting) or a single prunable matrix
(granularity `matrix`; `layer`, its former name, still works with a warning). Scorers compute one
number per matrix and aggregate it per group by `sum` (ECoFLaP's released scripts for BLIP-2) or
`avg` (sum / group size).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, PrunableMatrix, Redraw
from ecoflap_exp.options import Typed
from ecoflap_exp.tower_outputs import TowerOutputs

#: one group per block, or per matrix (`layer`: the old name of `matrix`)
Granularity = Literal["block", "matrix", "layer"]
Aggregate = Literal["sum", "avg"]
log = logging.getLogger(__name__)


class BlockScorer(Typed, ABC):
    option_group = "scorer"
    #: the scorer's part of a method's name, as the papers name methods ("" for uniform)
    name: str = ""
    #: True when the scores can give blocks different sparsities (every scorer but uniform).
    non_uniform: bool = True
    #: what the run record keeps about the last scores() call beside the scores (the record's
    #: `scorer_info`); a scorer that reports something assigns its own dict
    info: Mapping[str, Any] = MappingProxyType({})
    #: the calibration samples this scorer reads (None: the pruner's calib.num_samples); more than
    #: the pruner's are drawn from the same source after them
    num_samples: int | None = None

    @property
    def samples_needed(self) -> int | None:
        """Calibration samples this scorer reads (None: the pruner's)."""
        return self.num_samples

    def sample_counts(self) -> dict[str, int]:
        """The config key -> value of every sample count this scorer sets itself (the runner checks
        each is a whole number of calibration batches)."""
        return {} if self.num_samples is None else {"scorer.num_samples": self.num_samples}

    def check_samples(self, pruner_samples: int) -> None:
        """UserError now when the samples this scorer will read (its num_samples, else the
        pruner's) are too few for it; checked before any model loads."""
        return None

    def reads(self, batches: list[Batch], extended: list[Batch] | None) -> list[Batch]:
        """The batches this scorer reads: its first num_samples, drawn from `extended` when the
        pruner's calibration holds fewer."""
        if self.num_samples is None:
            return batches
        return first_samples(extended if extended is not None else batches, self.num_samples)

    @abstractmethod
    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        """Group name -> score, for every group of adapter.towers(). `batches`: the pruner's
        calibration; `extended`: the calibration drawn on to `samples_needed` samples (its first
        ones are `batches`), for a scorer that asked for more; `outputs`: the prune's stored tower
        outputs, which serve the towers a scorer's forwards cannot change (None: every tower is
        computed, unless the scorer keeps its own)."""


def check_granularity(granularity: Granularity) -> str:
    """The granularity, `layer` read as its new name `matrix` (with a warning)."""
    if granularity == "layer":
        log.warning("scorer.granularity=layer is now called scorer.granularity=matrix (one group per matrix); "
                    "`layer` will go")
        return "matrix"
    return granularity


def groups(adapter: ModelAdapter, granularity: str) -> dict[str, list[PrunableMatrix]]:
    """Group name -> its matrices, in pruning order."""
    if granularity == "matrix":
        return {m.name: [m] for m in adapter.matrices()}
    return {block.name: block.matrices for block in adapter.blocks()}


def samples_in(batch: Batch) -> int:
    """How many calibration samples a batch holds (the leading size of its first tensor)."""
    return len(next(iter(batch.values())))


def first_samples(batches: list[Batch], num_samples: int | None) -> list[Batch]:
    """The leading batches that hold `num_samples` calibration samples (all when None)."""
    if num_samples is None:
        return batches
    kept, count = [], 0
    for batch in batches:
        if count >= num_samples:
            break
        kept.append(batch)
        count += samples_in(batch)
    return kept


def aggregate(adapter: ModelAdapter, per_matrix: dict[str, float], granularity: str, how: str) -> dict[str, float]:
    """Per-matrix scores -> per-group scores by sum or mean per parameter."""
    out = {}
    for name, matrices in groups(adapter, granularity).items():
        total = sum(per_matrix[m.name] for m in matrices)
        out[name] = total / sum(m.numel for m in matrices) if how == "avg" else total
    return out
