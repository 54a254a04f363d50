"""Block scorers: one non-negative importance score per group (higher = pruned less).

A group is a block (granularity `block`, ECoFLaP's setting) or a single prunable matrix
(granularity `layer`). Scorers compute one number per matrix and aggregate it per group by `sum`
(ECoFLaP's released scripts for BLIP-2) or `avg` (sum / group size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, PrunableMatrix

GRANULARITIES = ("block", "layer")
AGGREGATES = ("sum", "avg")


class BlockScorer(ABC):
    #: True when the scores can give blocks different sparsities (every scorer but uniform).
    non_uniform: bool = True
    #: what the run record keeps about the last scores() call beside the scores (the record's
    #: `scorer_info`); a scorer that reports something assigns its own dict
    info: Mapping[str, Any] = MappingProxyType({})

    @abstractmethod
    def scores(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        """Group name -> score, for every group of adapter.towers()."""


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name}={value!r} is unknown; use one of {', '.join(choices)}")


def groups(adapter: ModelAdapter, granularity: str) -> dict[str, list[PrunableMatrix]]:
    """Group name -> its matrices, in pruning order."""
    check_choice("scorer.granularity", granularity, GRANULARITIES)
    if granularity == "layer":
        return {m.name: [m] for m in adapter.matrices()}
    return {block.name: block.matrices for block in adapter.blocks()}


def group_sizes(adapter: ModelAdapter) -> dict[str, int]:
    """Parameter count of every block and every matrix (a score's keys are one or the other)."""
    sizes = {block.name: block.numel for block in adapter.blocks()}
    sizes.update({m.name: m.numel for m in adapter.matrices()})
    return sizes


def group_tower(adapter: ModelAdapter) -> dict[str, str]:
    """Tower name of every block and every matrix."""
    owner = {}
    for tower in adapter.towers():
        for block in tower.blocks:
            owner[block.name] = tower.name
            owner.update({m.name: tower.name for m in block.matrices})
    return owner


def aggregate(adapter: ModelAdapter, per_matrix: dict[str, float], granularity: str, how: str) -> dict[str, float]:
    """Per-matrix scores -> per-group scores by sum or mean per parameter."""
    check_choice("scorer.aggregate", how, AGGREGATES)
    out = {}
    for name, matrices in groups(adapter, granularity).items():
        total = sum(per_matrix[m.name] for m in matrices)
        out[name] = total / sum(m.numel for m in matrices) if how == "avg" else total
    return out
