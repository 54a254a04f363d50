"""What the benchmarks measure with, shared with the tests (`from scripts.instrumentation import ...`)
and never on in a run: block forwards that really computed, and the plain forward pass every
benchmark compares with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.module_hooks import is_replaced


@dataclass
class BlockForwardCounter:
    #: forwards of blocks that really computed
    real: int = 0
    #: the same per tower
    by_tower: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def count_block_forwards(adapter: ModelAdapter) -> Iterator[BlockForwardCounter]:
    """Counts forwards of every block that really computed within the context, in all and per
    tower: blocks whose forward is replaced (skipped ones pass their input through) and blocks of
    towers whose stored outputs are served are not counted."""
    counter = BlockForwardCounter()

    def count(module: torch.nn.Module, args: tuple, output: object, tower: str) -> None:
        if not is_replaced(module):
            counter.real += 1
            counter.by_tower[tower] = counter.by_tower.get(tower, 0) + 1

    handles = [block.module.register_forward_hook(partial(count, tower=tower.name))
               for tower in adapter.all_towers() for block in tower.blocks]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def plain_forwards(adapter: ModelAdapter, batches: list[Batch]) -> None:
    """One forward of the model per batch, without gradients: the pass benchmarks compare with."""
    for batch in batches:
        adapter.forward(batch)
