"""ECoFLaP zeroth-order score (MEZO-GradOnly): forward passes only, no gradients.

For each prunable matrix W and calibration batch, draw z ~ N(0, I) from a seeded generator and
take the two-point estimate |L(W + eps z) - L(W - eps z)| / (2 eps) of the directional
derivative; a matrix's score is the sum over batches, a block's the sum over its matrices.

Two things the official code does not do:
- weights are restored bit-exactly after each perturbation (from a copy of that one matrix, kept
  in CPU memory; adding and subtracting eps z in bf16/fp16 drifts), and z is drawn a few rows at a
  time, so beyond a plain forward the accelerator holds only the cached block inputs;
- `reuse_prefix`: a perturbation in block i cannot change what blocks before it compute, so the
  inputs of block i are cached once (walking the model block by block, like the pruning engine)
  and each perturbed loss skips the tower's blocks before i (assuming, as in every supported
  model, that a block's output feeds only the next block). The estimates equal the full-forward
  ones and about half of a tower's block forwards are saved.
- `reuse_towers`: a perturbation of tower T cannot change the towers that do not read T (those
  before it, BLIP-2's ViT and Q-Former while T5 is scored; those beside it, CLIP's image tower
  while the text is), so their outputs are computed once per batch and served from the
  TowerOutputs `scores` is handed (its own for the call when it is handed none); the estimates
  are again those of the full forwards.
With `redraw` (redraw_calibration) each matrix reads fresh batches, as ECoFLaP's loop iterates its
DataLoader anew per matrix; no block inputs are then shared, and the per-matrix loop runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from functools import partial

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Redraw, Tower
from ecoflap_exp.options import Count, NonNegativeInt, PositiveFloat
from ecoflap_exp.progress import track
from ecoflap_exp.scoring.base import Aggregate, BlockScorer, Granularity, aggregate, check_granularity
from ecoflap_exp.tower_outputs import DEFAULT_BUDGET_GB, TowerOutputs
from ecoflap_exp.walk import passing_through, walk_tower

log = logging.getLogger(__name__)


class ZerothOrderScorer(BlockScorer):
    name = "ecoflap-zeroth"

    def __init__(self, eps: PositiveFloat = 1e-3, num_samples: Count | None = 32, granularity: Granularity = "block",
                 aggregate: Aggregate = "sum", seed: NonNegativeInt = 0, reuse_prefix: bool = True,
                 reuse_towers: bool = True):
        self.eps = eps
        self.num_samples = num_samples
        self.granularity, self.aggregate = check_granularity(granularity), aggregate
        self.seed = seed
        self.reuse_prefix = reuse_prefix
        self.reuse_towers = reuse_towers  # with reuse_prefix only: reuse_prefix=false is the official loop

    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        batches = self.reads(batches, extended)
        with torch.no_grad():
            adapter.model.eval()
            if redraw is not None:
                per_matrix = self._naive(adapter, batches, redraw)
            elif self.reuse_prefix:
                per_matrix = self._with_prefix(adapter, batches, outputs)
            else:
                per_matrix = self._naive(adapter, batches)
        zero = [name for name, value in per_matrix.items() if value == 0]
        self.info = {"zero_estimates": len(zero), "matrices": len(per_matrix)}
        if redraw is not None:
            self.info["redrawn_per_matrix"] = True
        if zero:
            log.warning("zeroth-order scoring: %d of %d matrices got an estimate of exactly 0 (%s%s): the loss did "
                        "not change under a perturbation of eps=%g; raise scorer.eps or check that the loss "
                        "resolves such differences", len(zero), len(per_matrix), ", ".join(zero[:5]),
                        ", ..." if len(zero) > 5 else "", self.eps)
        return aggregate(adapter, per_matrix, self.granularity, self.aggregate)

    def _naive(self, adapter: ModelAdapter, batches: list[Batch], redraw: Redraw | None = None) -> dict[str, float]:
        """The official loop: full forwards, each matrix over the calibration batches; with
        `redraw`, over fresh batches per matrix, as ECoFLaP's loop iterates its DataLoader anew for
        each matrix (no block inputs can then be shared between matrices, so prefix reuse is off)."""
        matrices = list(adapter.matrices())
        per_matrix = {}
        for index, m in enumerate(track(matrices, "zeroth-order scores", total=len(matrices))):
            seen = redraw(f"zeroth/{m.name}", self.num_samples) if redraw else batches
            per_matrix[m.name] = self.estimate(m, index, [partial(adapter.loss, b) for b in seen])
        return per_matrix

    def _with_prefix(self, adapter: ModelAdapter, batches: list[Batch], outputs: TowerOutputs | None
                     ) -> dict[str, float]:
        """The walk, its captures served from `outputs`, and its perturbed losses too with
        reuse_towers (from a TowerOutputs of its own when handed none)."""
        if outputs is not None or not self.reuse_towers:
            return self._walk(adapter, batches, outputs, outputs if self.reuse_towers else None)
        with TowerOutputs(adapter, DEFAULT_BUDGET_GB) as own:
            return self._walk(adapter, batches, own, own)

    def _walk(self, adapter: ModelAdapter, batches: list[Batch], captures: TowerOutputs | None,
              losses: TowerOutputs | None) -> dict[str, float]:
        """Block by block, each matrix's estimate from the block's cached inputs on: the walk's
        captures served from `captures`, the perturbed losses from `losses`."""
        index = {m.name: i for i, m in enumerate(adapter.matrices())}
        per_matrix: dict[str, float] = {}
        for tower in adapter.towers():
            walk = walk_tower(adapter, tower, batches, adapter.device, description=f"zeroth-order {tower.name}",
                              outputs=captures)
            unchanged = losses.unchanged_by(tower.name) if losses else {}
            for b, (block, inputs) in enumerate(walk):
                # this tower's earlier blocks are skipped; other towers' outputs that the
                # perturbation cannot reach (an earlier tower's, CLIP's image embedding while the
                # text is scored) are served from `losses`
                earlier = [(tower, blk) for blk in tower.blocks[:b]]
                with start_at(block.module, earlier) as feed:

                    def loss_from_block(batch: Batch, inp: BlockInput, unchanged: dict[str, bool]) -> torch.Tensor:
                        feed(inp)
                        if losses is None:
                            return adapter.loss(batch)
                        with losses.serving(unchanged), losses.batch(batch):
                            return adapter.loss(batch)

                    block_losses = [partial(loss_from_block, batch, inp, unchanged)
                                    for batch, inp in zip(batches, inputs, strict=True)]
                    for m in block.matrices:
                        per_matrix[m.name] = self.estimate(m, index[m.name], block_losses)
        return per_matrix

    def estimate(self, matrix: PrunableMatrix, index: int, losses: list[Callable[[], torch.Tensor]]) -> float:
        """Sum over batches of |L(W + eps z) - L(W - eps z)| / (2 eps), W restored bit-exactly."""
        weight = matrix.weight
        # the copy that makes the restore exact; off the accelerator, where memory is scarce
        original = weight.to("cpu", copy=True)
        total = 0.0
        for b, loss in enumerate(losses):
            seed = self.seed * 1_000_003 + index * 1009 + b
            perturb(weight, original, seed, self.eps)
            plus = loss().item()
            perturb(weight, original, seed, -self.eps)
            minus = loss().item()
            weight.copy_(original)
            if not (math.isfinite(plus) and math.isfinite(minus)):
                raise UserError(f"zeroth-order scoring: the loss is not finite ({plus}, {minus}) when "
                                f"perturbing {matrix.name}; lower scorer.eps or check the calibration data")
            total += abs(plus - minus) / (2 * self.eps)
        return total


def perturb(weight: torch.Tensor, original: torch.Tensor, seed: int, alpha: float, chunk: int = 1 << 22) -> None:
    """weight = original + alpha * z with z ~ N(0, I) drawn from `seed`, a few rows at a time so
    that z never exists whole (same seed, same z). z is drawn in fp32 and the sum rounded to the
    weight's dtype, so a seed gives the same direction in every dtype (torch's bf16 and fp32
    normal streams differ)."""
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    rows, cols = weight.shape
    step = max(1, chunk // cols)
    for r in range(0, rows, step):
        part = weight[r : r + step]
        z = torch.randn(part.shape, generator=generator, device=weight.device, dtype=torch.float32)
        part.copy_(z.mul_(alpha).add_(original[r : r + step].to(weight.device)))


@contextlib.contextmanager
def start_at(first: torch.nn.Module, skipped: list[tuple[Tower, Block]]) -> Iterator[Callable[[BlockInput], None]]:
    """Within the context the model's forward skips the `skipped` blocks (each passes its input
    through) and `first` receives the BlockInput last handed to `feed` instead of its own."""
    current: list[BlockInput] = []

    def replace_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        inp = current[-1]
        return (inp.hidden, *inp.args), dict(inp.kwargs)

    def feed(inp: BlockInput) -> None:
        current[:] = [inp]

    handle = first.register_forward_pre_hook(replace_input, with_kwargs=True)
    try:
        with passing_through(skipped):
            yield feed
    finally:
        handle.remove()
