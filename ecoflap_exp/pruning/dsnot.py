"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): an initial mask, then training-free
prune-and-grow swaps per output row that shrink each row's expected reconstruction error, as the
reference does (zyxxmu/DSnoT 4c029df, lib/prune.py `prune_DSnoT`, lines 422-873). No weight changes.

Statistics (lib/layerwrapper.py:37-60, `ColumnMoments`): per input column j, over the calibration
batches, Wanda's mean squared norm s_j (`scaler_row`), the mean over samples of the column's token sum
m_j (`sum_metric_row`) and the variance v_j (`var`: each batch's population variance over its tokens,
averaged weighted by tokens; the reference's batches are one sample each, so calib.batch_size=1 gives
its numbers). The reference's `mean` is accumulated but read by nothing, so it is not kept here.

Per matrix (W: rows x cols): the initial mask from `initial` (lib/prune.py:485-516): Wanda's
|W| sqrt(s), |W|, or SparseGPT's score W^2 / [U]_jj^2 (U the upper Cholesky factor of the damped
H^-1; a score only, no weight update, as the reference), chosen per output row as Wanda chooses.
D_ij = W_ij m_j is weight ij's expected share of output i (over a sample's tokens); row i's error
e_i = sum of D_ij over its pruned weights. Each cycle, every row still updating swaps one pair
(lib/prune.py:758-852):

- it regrows the pruned weight with the most negative D_ij / v_j^pow_of_var_regrowing if e_i <= 0,
  the most positive if e_i > 0 (each side's candidates taken in turn);
- it prunes, among the weights the initial mask kept, the one with the smallest Wanda metric whose
  D_ij has the sign opposite e_i's (D < 0 when e_i >= 0);
- the swap is applied while |e_i| > update_threshold (and, with without_same_sign=false, while it
  keeps e_i's initial sign); a row that stops once never resumes; at most max_cycle_time cycles.

N:M (lib/prune.py:527-665): the regrow candidate as above; the weight pruned in exchange is the kept
weight of the same M-group with the smallest initial metric (so the pattern holds); the sign check
is always on there, as in the reference.

Options, with the reference's defaults (main.py): initial = --initial_method (main.py:40, no default;
the README's command: wanda); max_cycle_time 50 (:42); without_dsnot (:43); update_threshold 0.1
(:44); pow_of_var_regrowing 1 (:45; 0: no division); skip_layer mlp (:47: the MLP's matrices keep
their initial mask, so DSnoT swaps attention matrices only); skip_sub_layer no_skip (:48);
without_same_sign true (:49; argparse's type=bool makes every value given on its command line true).
--pow_of_var_pruning (:46) is read by nothing in the reference, so it is not offered.

count: `reference` takes int(cols x p) per row initially (the reference's count) and `exact`
round(rows x cols x p) per matrix (masks.select_mask); the swaps keep every row's count, so both
hold after DSnoT.

Where we differ from the reference, and why:
- a row stops when the side it needs has no candidate left (no pruned weight of the regrowing sign,
  no kept weight of the pruning sign, or an N:M group with no kept weight left). The reference walks
  on into weights of the other kind: it "regrows" kept weights (the row loses one more weight per
  cycle, its error bookkeeping wrong), writes masks in rows that have stopped, and indexes past its
  lists (RuntimeError: index out of bounds) when a matrix has fewer columns per side than cycles. Where no list runs out
  (a LLaMA-7B row at 0.5 has about a thousand candidates per side against 50 cycles; the tiny LLaMA's
  rows stop by the threshold first) the masks are the reference's bit for bit;
- 0 / 0 in the regrowing key (a column always zero: m_j = v_j = 0) is 0, where the reference's NaN
  sorts last, so that weight is the first it regrows when e_i > 0;
- initial=sparsegpt: the reference never accumulates the Hessian (WrappedGPT.add_batch leaves H at
  zero, so its score is 0 everywhere and each row prunes its first columns); here H is SparseGPT's
  2/n sum x x^T (pruning/sparsegpt.py) and its inverse is shared by q, k, v as SparseGPT shares it;
- --without_DSnoT is honoured under N:M too (the reference's N:M branch ignores it); the skipped
  sub-layers are found by name in every family: attention is a matrix whose name within its block
  has "attn" or "attention" in it (self_attn, attn, SelfAttention, crossattention...), every other
  matrix is the MLP (the reference's OPT rule, lib/prune_opt.py:239); skip_sub_layer is the name's
  last part (q_proj, fc1, ...);
- ties between candidates are broken by position (the reference's N:M `torch.sort`/`topk` leave
  them unspecified).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from ecoflap_exp.input_stats import ColumnNorms, InputStats, wanda_metric
from ecoflap_exp.models.seam import Block, Group, PrunableMatrix, Tower
from ecoflap_exp.options import NonNegativeFloat, NonNegativeInt, PositiveFloat
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import NM, Counting, select_mask
from ecoflap_exp.pruning.sparsegpt import Hessian

#: the pruner whose metric gives the initial mask (the reference's --initial_method)
Initial = Literal["wanda", "sparsegpt", "magnitude"]
#: the sub-layers left at their initial mask (the reference's --skip_layer)
SkipLayer = Literal["no_skip", "mlp", "self_attn"]


class ColumnMoments(ColumnNorms):
    """Wanda's squared column norms plus, per input column, the mean over samples of its token sum
    and its variance, accumulated as the reference's WrappedGPT.add_batch does, bit for bit
    (lib/layerwrapper.py:47-60); with `hessian`, SparseGPT's Hessian too (initial=sparsegpt)."""

    def __init__(self, cols: int, device: torch.device, hessian: bool = False):
        super().__init__(cols, device)
        self.sums = torch.zeros(cols, device=device, dtype=torch.float32)
        self.var = torch.zeros(cols, device=device, dtype=torch.float32)
        self.tokens = 0
        self.hessian = Hessian(cols, device) if hessian else None

    def add(self, tokens: torch.Tensor, samples: int) -> None:
        super().add(tokens, samples)
        if self.hessian is not None:
            self.hessian.add(tokens, samples)

    def accumulate(self, tokens: torch.Tensor, rescale: float) -> None:
        super().accumulate(tokens, rescale)
        columns = tokens.t()  # (columns, tokens), the reference's layout: its reductions round the same
        self.sums.mul_(rescale)
        self.sums += torch.sum(columns, dim=1) / self.samples
        count = columns.shape[1]
        if count:  # a batch of pads only has no variance to add
            var = torch.var(columns, dim=1, unbiased=False)
            # the reference's running mean weighted by tokens, in its order of operations
            self.var = var if self.tokens == 0 else (self.var * self.tokens + var * count) / (self.tokens + count)
            self.tokens += count


class DSnoTPruner(LocalPruner):
    """The initial pruner's mask, then DSnoT's swaps (the module's docstring); the weights that stay
    keep their values."""

    name = "dsnot"

    def __init__(self, initial: Initial = "wanda", max_cycle_time: NonNegativeInt = 50,
                 update_threshold: NonNegativeFloat = 0.1, pow_of_var_regrowing: NonNegativeFloat = 1.0,
                 without_same_sign: bool = True, skip_layer: SkipLayer = "mlp", skip_sub_layer: str = "no_skip",
                 without_dsnot: bool = False, group: Group | None = None, percdamp: PositiveFloat = 0.01,
                 count: Counting = "exact"):
        super().__init__(count)
        self.initial = initial
        self.max_cycle_time = max_cycle_time
        self.update_threshold = update_threshold
        self.pow_of_var_regrowing = pow_of_var_regrowing
        self.without_same_sign = without_same_sign
        self.skip_layer = skip_layer
        self.skip_sub_layer = skip_sub_layer
        self.without_dsnot = without_dsnot
        self.group = group
        self.percdamp = percdamp

    def new_stats(self, cols: int, device: torch.device) -> ColumnMoments:
        return ColumnMoments(cols, device, hessian=self.initial == "sparsegpt")

    def group_for(self, tower: Tower) -> Group:
        return self.group or tower.wanda_group

    def skips(self, name: str) -> bool:
        """Whether the matrix called `name` within its block keeps its initial mask."""
        attention = "attn" in name.lower() or "attention" in name.lower()
        layer = "self_attn" if attention else "mlp"
        return layer == self.skip_layer or name.split(".")[-1] == self.skip_sub_layer

    def for_matrix(self, block: Block, matrix: PrunableMatrix) -> LocalPruner:
        if self.without_dsnot or not self.skips(matrix.name.removeprefix(f"{block.name}.")):
            return self
        initial_only = copy.copy(self)
        initial_only.without_dsnot = True
        return initial_only

    def initial_metric(self, weight: torch.Tensor, stats: ColumnMoments) -> torch.Tensor:
        """The initial pruner's metric (fp32), as lib/prune.py:485-516 computes it."""
        if self.initial == "wanda":
            return wanda_metric(weight, stats)
        if self.initial == "magnitude":
            return weight.abs().float()
        assert stats.hessian is not None
        W = weight.float().masked_fill(stats.hessian.dead_columns(), 0)
        return W**2 / torch.diag(stats.hessian.inverse(self.percdamp)).reshape((1, -1)) ** 2

    @torch.no_grad()
    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        assert isinstance(stats, ColumnMoments)
        metric = self.initial_metric(weight, stats)
        mask = select_mask(metric, sparsity, group or "row", nm, self.count)
        if not self.without_dsnot:
            expected = weight * stats.sums.reshape((1, -1))  # D = W m: fp32, as the reference's DSnoT_metric
            regrow_key = regrowing_key(expected, mask, stats.var, self.pow_of_var_regrowing)
            if nm is None:
                swap_unstructured(mask, expected, regrow_key, wanda_metric(weight, stats), self.max_cycle_time,
                                  self.update_threshold, same_sign=not self.without_same_sign)
            else:
                swap_nm(mask, expected, regrow_key, metric, nm, self.max_cycle_time, self.update_threshold)
        weight.masked_fill_(mask, 0)
        return mask


def regrowing_key(expected: torch.Tensor, mask: torch.Tensor, var: torch.Tensor, power: float) -> torch.Tensor:
    """D_ij / v_j^power on the pruned weights, 0 on the kept ones (lib/prune.py:690-705); 0 / 0 is 0."""
    lost = expected.masked_fill(~mask, 0)
    if not power:
        return lost
    return (lost / torch.pow(var.reshape((1, -1)), power)).masked_fill_(lost == 0, 0)


def row_error(expected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's expected output lost to its pruned weights, summed as the reference sums it."""
    return torch.sum(expected.masked_fill(~mask, 0), dim=1)


class RegrowOrder:
    """Every row's weights sorted by the regrowing key (stable), read from both ends: from the front
    while the key is negative, from the back while it is positive (pruned weights only: kept weights
    have key 0). `take(back)` gives each row's next candidate on its side and whether it is one."""

    def __init__(self, key: torch.Tensor):
        self.key = key
        self.order = torch.sort(key, dim=1, stable=True).indices
        rows, cols = key.shape
        self.front = torch.zeros(rows, dtype=torch.long, device=key.device)
        self.back = torch.full((rows,), cols - 1, dtype=torch.long, device=key.device)

    def take(self, back: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position = torch.where(back, self.back, self.front)
        inside = (position >= 0) & (position < self.key.shape[1])
        index = self.order.gather(1, position.clamp(0, self.key.shape[1] - 1)[:, None]).squeeze(1)
        key = self.key.gather(1, index[:, None]).squeeze(1)
        return index, inside & torch.where(back, key > 0, key < 0)

    def advance(self, back: torch.Tensor, moved: torch.Tensor) -> None:
        self.back -= (moved & back).long()
        self.front += (moved & ~back).long()


def swap_unstructured(mask: torch.Tensor, expected: torch.Tensor, regrow_key: torch.Tensor, wanda: torch.Tensor,
                      cycles: int, threshold: float, same_sign: bool) -> None:
    """DSnoT's cycles on an unstructured mask, in place (lib/prune.py:688-852)."""
    rows = torch.arange(mask.shape[0], device=mask.device)
    error = row_error(expected, mask)
    initial_sign = torch.sign(error)
    regrow = RegrowOrder(regrow_key)
    # the weights the initial mask kept, by Wanda's metric (stable): those with D < 0 first, those
    # with D > 0 last, each in that order, so that the next candidate of a sign is the least
    # important kept weight of that sign (the reference's return_reorder_indice list, read from its
    # front and from its back)
    cols = mask.shape[1]
    by_wanda = torch.sort(wanda.masked_fill(mask, float("inf")), dim=1, stable=True).indices
    in_order = expected.gather(1, by_wanda)
    kept_in_order = ~mask.gather(1, by_wanda)
    negative, positive = (in_order < 0) & kept_in_order, (in_order > 0) & kept_in_order
    kind = 1 - negative.to(torch.uint8) + positive.to(torch.uint8)  # 0, 1 (neither), 2
    prune_order = by_wanda.gather(1, torch.sort(kind, dim=1, stable=True).indices)
    del by_wanda, in_order, kept_in_order, kind
    counts = torch.stack([negative.sum(1), positive.sum(1)])
    taken = torch.zeros_like(counts)
    updating = torch.ones_like(error, dtype=torch.bool)
    for _ in range(cycles):
        if not updating.any():
            break
        # regrow against the error's sign; prune a weight of the opposite sign
        regrow_back = error > 0
        regrown, regrow_ok = regrow.take(regrow_back)
        side = (error < 0).long()  # 0: a negative D (error >= 0), 1: a positive D
        done = taken[side, rows]
        position = torch.where(side == 1, cols - counts[1] + done, done)
        pruned = prune_order[rows, position.clamp(max=cols - 1)]
        prune_ok = done < counts[side, rows]
        regrowing, pruning = expected[rows, regrown], expected[rows, pruned]
        updating &= (error.abs() > threshold) & regrow_ok & prune_ok
        if same_sign:
            updating &= initial_sign == torch.sign(error + pruning - regrowing)
        mask[rows[updating], pruned[updating]] = True
        mask[rows[updating], regrown[updating]] = False
        # the reference's two in-place updates, in its order (its float sums)
        error += torch.where(updating, pruning, torch.zeros_like(pruning))
        error -= torch.where(updating, regrowing, torch.zeros_like(regrowing))
        regrow.advance(regrow_back, updating)
        taken[side, rows] += updating.long()


def swap_nm(mask: torch.Tensor, expected: torch.Tensor, regrow_key: torch.Tensor, metric: torch.Tensor, nm: NM,
            cycles: int, threshold: float) -> None:
    """DSnoT's cycles on an N:M mask, in place (lib/prune.py:550-665): each regrown weight's group
    gives up its kept weight with the smallest initial metric, so every group keeps N."""
    rows = torch.arange(mask.shape[0], device=mask.device)
    error = row_error(expected, mask)
    initial_sign = torch.sign(error)
    regrow = RegrowOrder(regrow_key)
    # the weights that may still be pruned in exchange: kept by the initial mask, not yet pruned
    candidates = metric.masked_fill(mask, float("inf"))
    offsets = torch.arange(nm.m, device=mask.device)
    updating = torch.ones_like(error, dtype=torch.bool)
    for _ in range(cycles):
        if not updating.any():
            break
        regrow_back = error > 0
        regrown, regrow_ok = regrow.take(regrow_back)
        start = regrown - regrown % nm.m
        in_group = candidates.gather(1, start[:, None] + offsets)
        smallest, place = in_group.min(dim=1)
        pruned = start + place
        regrowing, pruning = expected[rows, regrown], expected[rows, pruned]
        updating &= ((initial_sign == torch.sign(error + pruning - regrowing)) & (error.abs() > threshold)
                     & regrow_ok & torch.isfinite(smallest))
        candidates[rows[updating], pruned[updating]] = float("inf")
        mask[rows[updating], pruned[updating]] = True
        mask[rows[updating], regrown[updating]] = False
        error += torch.where(updating, pruning, torch.zeros_like(pruning))
        error -= torch.where(updating, regrowing, torch.zeros_like(regrowing))
        regrow.advance(regrow_back, updating)
