"""Intrinsic dimension (ID) of each prunable matrix's (or block's) output as its importance: what
the scorer collects (the outputs as representations, per matrix or per block) and how it turns the
IDs into scores; the estimators (TwoNN, MLE, TwoNN over blocks) and the store of the vectors they
read are in ecoflap_exp.scoring.id_estimators.

Representations of a sample: `flatten` (its whole token sequence as one vector, the paper's),
`mean` (mean over tokens) or `cls` (first token). Padding never enters: `mean` averages the real
tokens; `flatten` zeroes the pad positions and pads shorter sequences with zeros to the longest, so
two samples differ only where they hold real tokens.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Redraw, Tower
from ecoflap_exp.module_hooks import observing_matrices
from ecoflap_exp.options import Count, Fraction, NonNegativeInt
from ecoflap_exp.scoring.base import BlockScorer, Granularity, check_granularity
from ecoflap_exp.scoring.id_estimators import VectorStore, check_block_samples, mle_of, twonn_blocks_of, twonn_of
from ecoflap_exp.tower_outputs import TowerOutputs
from ecoflap_exp.walk import walk_tower

log = logging.getLogger(__name__)

Estimator = Literal["twonn", "mle", "twonn_blocks"]
Representation = Literal["flatten", "mean", "cls"]
Pads = Literal["zero", "computed"]


def split_samples(rows: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features) holding every sample's tokens one after another, `sizes` each sample's
    share of them (in any unit: a patch merger's 4x fewer rows keep the shares) -> (batch, tokens,
    features) padded with zeros to the longest sample, and the mask of the real tokens."""
    total = sum(sizes)
    if any(n * rows.shape[0] % total for n in sizes):
        raise RuntimeError(f"{rows.shape[0]} rows do not split into samples of shares {sizes}; the tower's "
                           f"sample_sizes is wrong")
    counts = [n * rows.shape[0] // total for n in sizes]
    parts = torch.split(rows, counts)
    width = max(counts)
    padded = rows.new_zeros(len(counts), width, rows.shape[-1])
    mask = torch.zeros(len(counts), width, dtype=torch.bool, device=rows.device)
    for i, part in enumerate(parts):
        padded[i, : len(part)] = part
        mask[i, : len(part)] = True
    return padded, mask


def representation(hidden: torch.Tensor, kind: str, mask: torch.Tensor | None = None,
                   sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """(batch, tokens, features) -> per sample: (batch, tokens, features) for `flatten` with the
    pads zeroed, (batch, features) for `mean` and `cls`; `mask` (batch, tokens): the real tokens
    (None: all). A (rows, features) input is one vector per row, unless `sizes` says how its rows
    split into samples (a tower with no batch axis: BlockInput.sizes)."""
    if hidden.dim() == 2 and sizes is not None:
        hidden, mask = split_samples(hidden, sizes)
    if hidden.dim() == 2:
        return hidden
    if kind == "cls":
        return hidden[:, 0]
    if mask is not None:
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0)
    if kind == "flatten":
        return hidden
    if mask is None:
        return hidden.mean(1)
    return hidden.sum(1) / mask.sum(1, keepdim=True).to(hidden.dtype)


def per_sample(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A matrix's input or output as (batch, tokens, features), also where the model flattened the
    tokens before the matrix (OPT's MLP)."""
    if x.dim() == 2 and hidden.dim() == 3 and x.shape[0] == hidden.shape[0] * hidden.shape[1]:
        return x.reshape(hidden.shape[0], hidden.shape[1], -1)
    return x


def output_of(m: PrunableMatrix, x: torch.Tensor, out: Any) -> torch.Tensor:
    """x W^T of the matrix's own rows, from its input `x` and the output `out` of the module it
    reads it in: that output where the matrix is (rows of) the nn.Linear's weight (its bias moves
    every sample alike and leaves distances as they are), else computed from `x` (open_clip's fused
    in_proj inside attention)."""
    module = m.input_module
    if isinstance(module, torch.nn.Linear) and module.weight is m.param and isinstance(out, torch.Tensor):
        return out[..., m.rows]
    return F.linear(x, m.weight)


class IntrinsicDimensionScorer(BlockScorer):
    """Intrinsic dimension as importance (higher = pruned less).

    Granularity `matrix` (the ID paper's): the ID of each prunable matrix's output (x W^T of its
    own rows, a fused or sliced matrix included; a bias would shift every point alike and leave the
    ID as it is), every matrix of a block measured in one pass over the samples. Granularity
    `block`: the ID of the block's output. A sample's representation is its whole token sequence
    flattened (the paper's), or the `mean` or `cls` token. `num_samples`: how many calibration
    samples the ID is estimated on (the paper: 2000; the calibration then holds at least that many,
    and the pruner still uses the first calib.num_samples). `store_dir`: keep a block's outputs in
    files there instead of memory (the paper's 2000 samples of a BLIP-2 ViT block are 27 GB in
    float32; scripts/bench_scoring.py --setting id measures time and peak memory).

    `pads`: a padded sample's representation with its pad positions `zero` (it does not depend on
    its batch) or `computed` (the layer's outputs there, as ID_VL_Pruning's hooks keep them up to
    each batch's longest caption; zeros beyond, as its expand_dim1).

    Scores are IDs per weight summed over each group, ID x group size, so equal IDs give every
    group the target under water-filling and global ranking reads the ID back per weight. The raw
    IDs are in `info["intrinsic_dim"]` (the record's scorer_info), with their mean per tower, and the
    number of distinct points each rests on in `info["id_points"]` (an image repeated in the eval
    view is one point in the vision layers); a tower whose IDs rest on fewer than half the samples
    is warned about.
    """

    name = "id"

    def __init__(self, estimator: Estimator = "twonn", representation: Representation = "flatten",
                 discard_fraction: Fraction = 0.1, granularity: Granularity = "block", num_samples: Count | None = None,
                 store_dir: str | None = None, seed: NonNegativeInt = 0, pads: Pads = "zero"):
        if num_samples is not None and num_samples < 4:
            raise UserError(f"scorer.num_samples={num_samples}: TwoNN needs at least 4 samples (the paper: 2000)")
        self.estimator = estimator
        self.representation = representation
        self.discard_fraction = discard_fraction
        self.granularity = check_granularity(granularity)
        self.num_samples = num_samples
        self.store_dir = Path(store_dir) if store_dir else None
        self.seed = seed
        self.pads = pads
        self.points: dict[str, tuple[int, int]] = {}  # group -> (distinct points, samples) of its estimate

    def pad_mask(self, masks: dict[str, torch.Tensor], stream: str) -> torch.Tensor | None:
        return masks.get(stream) if self.pads == "zero" else None

    def check_samples(self, pruner_samples: int) -> None:
        if self.estimator == "twonn_blocks":
            check_block_samples(self.num_samples or pruner_samples, what="samples")

    def estimate(self, store: VectorStore, where: str) -> float:
        neighbours = store.neighbours()
        self.points[where] = (len(neighbours.distinct), store.points)
        if self.estimator == "mle":
            value = mle_of(neighbours)
        elif self.estimator == "twonn_blocks":
            value = twonn_blocks_of(neighbours, seed=self.seed)
        else:
            value = twonn_of(neighbours, self.discard_fraction)
        if not math.isfinite(value):
            raise UserError(f"intrinsic dimension of {where} is {value}; its outputs are degenerate (too few distinct "
                            f"samples?)")
        return value

    @contextmanager
    def stores(self, names: list[str], device: torch.device) -> Iterator[dict[str, VectorStore]]:
        """One store per name; with store_dir, each in a temporary folder removed afterwards."""
        if self.store_dir is None:
            yield {name: VectorStore(device) for name in names}
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.store_dir, prefix="id-") as folder:
            for name in names:
                (Path(folder) / name).mkdir()
            yield {name: VectorStore(device, Path(folder) / name) for name in names}

    def block_ids(self, adapter: ModelAdapter, batches: list[Batch], outputs: TowerOutputs | None
                  ) -> dict[str, float]:
        ids: dict[str, float] = {}

        def measure(block: Block, outputs: list[BlockInput]) -> None:
            with self.stores([block.name], adapter.device) as stores:
                for out in outputs:
                    stores[block.name].add(representation(out.hidden, self.representation,
                                                          self.pad_mask(out.masks, "hidden"), out.sizes))
                ids[block.name] = self.estimate(stores[block.name], block.name)

        for tower in adapter.towers():
            for _ in walk_tower(adapter, tower, batches, adapter.device, description=f"ID {tower.name}",
                                after=measure, outputs=outputs):
                pass
        return ids

    def matrix_stores(self, tower: Tower, block: Block, inputs: list[BlockInput],
                      stores: dict[str, VectorStore]) -> None:
        """Every matrix's output vectors over all samples into its store, from one run of the block
        per input."""
        current: list[BlockInput] = []

        def observe(m: PrunableMatrix, x: torch.Tensor, out: Any) -> None:
            inp = current[0]
            stores[m.name].add(representation(per_sample(output_of(m, x, out), inp.hidden), self.representation,
                                              self.pad_mask(inp.masks, m.stream), inp.sizes))

        with observing_matrices(block.matrices, observe):
            for inp in inputs:
                current[:] = [inp]
                tower.run_block(block, inp)

    def matrix_ids(self, adapter: ModelAdapter, batches: list[Batch], outputs: TowerOutputs | None
                   ) -> dict[str, float]:
        ids: dict[str, float] = {}
        for tower in adapter.towers():
            for block, inputs in walk_tower(adapter, tower, batches, adapter.device, description=f"ID {tower.name}",
                                            outputs=outputs):
                with self.stores([m.name for m in block.matrices], adapter.device) as stores:
                    self.matrix_stores(tower, block, inputs, stores)
                    for name, store in stores.items():
                        ids[name] = self.estimate(store, name)
        return ids

    @torch.no_grad()
    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        batches = self.reads(batches, extended)
        adapter.model.eval()
        self.points = {}
        ids = (self.matrix_ids(adapter, batches, outputs) if self.granularity == "matrix"
               else self.block_ids(adapter, batches, outputs))
        groups = Groups.of(adapter)
        by_tower: dict[str, list[float]] = {}
        fewest: dict[str, tuple[int, int]] = {}  # per tower, the estimate on the lowest share of distinct points
        for name, value in ids.items():
            tower = groups.towers[name]
            by_tower.setdefault(tower, []).append(value)
            fewest[tower] = min(fewest.get(tower, self.points[name]), self.points[name], key=lambda p: p[0] / p[1])
        for tower, (distinct, samples) in fewest.items():
            if distinct < samples / 2:
                log.warning("the intrinsic dimensions of tower %s rest on as few as %d distinct points of %d samples "
                            "(a calibration that repeats each image in its eval view gives one point per image in "
                            "the vision layers); draw the samples at random (calib.shuffle=true) in the training "
                            "view (calib.augment=train), as ID_VL_Pruning does", tower, distinct, samples)
        self.info = {"intrinsic_dim": ids, "tower_mean_id": {t: sum(v) / len(v) for t, v in by_tower.items()},
                     "id_points": {name: self.points[name][0] for name in ids},
                     "id_samples": max((samples for _, samples in self.points.values()), default=0)}
        return {name: value * groups.sizes[name] for name, value in ids.items()}
