"""RIA (Zhang et al., ICLR 2024, "Plug-and-Play"): relative importance and activations, as the
reference prunes (biomedical-cybernetics/Relative-importance-and-activation-pruning, 7bc55b0,
lib/prune.py `prune_ria`).

Metric (lib/prune.py:239): (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) x sqrt(s_j) ** a, where
s_j is Wanda's mean squared input-column norm (the reference's `scaler_row`, lib/layerwrapper.py:57),
so the factor is ||X_j||_2 ** a. The relative importance is computed in the weight's own dtype, as the
reference does (fp16 in its runs); the activation factor makes the metric fp32.

Unstructured: over the whole matrix (`group=matrix`, the reference's default: every metric <= the
value at index int(rows x cols x p) under `count=reference`) or per output row (`group=row`, its
`--per_outneuron`: int(cols x p) per row, stable order).

N:M: the M-N smallest of every M consecutive columns. With `reallocation` (heuristic channel
reallocation, lib/prune.py:258-298) the input channels are first permuted: sorted by their summed
metric and dealt so that every group of M holds one channel from each of M equal bands (the first,
third, ... band ascending, the second, fourth, ... descending); the N:M groups are chosen in that
permuted order. With `lsa` (lib/prune.py:300-376) the permutation is then refined once per position
c in 0..M-1: the channel at position c of every group is reassigned among the groups by a linear
sum assignment that maximises the total kept metric. As in the reference (lib/prune.py:379-386),
the weights stay in their original order: the mask chosen in permuted order is mapped back, so the
model computes what the reference's pruned model computes, and W[:, order] is N:M
(`reallocated_nm_mask` returns the order; the count verification needs nothing more).

Where we differ from the reference (7bc55b0):
- an all-zero row or column gets relative importance 0 there (the reference divides 0 by 0: NaN,
  never pruned, which shifts its count);
- the channel sort is stable (the reference's is not); N:M ties within a group are broken by
  position (the reference's topk leaves them unspecified);
- the assignment's scores are summed as sum(f_1..f_{N-1}) + max(v, f_N) (see `assignment_scores`),
  where the reference sorts M-wide strips and sums their kept values, so the float32 sums round
  differently; where two assignments tie (in matrices of a few rows, or where the offered channels
  beat every row's f_N), rounding picks one in either code, and the rounds after may differ;
- the reference's `--importance_score` variants other than `sum` (its default) and its `--fast`
  block split (which needs the layer's name) are not offered;
- its `--sparsity_type N:M` prunes N of every M (its `prune_n`); our nm=N:M keeps N (equal for 2:4, 4:8).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from ecoflap_exp.errors import UserError
from ecoflap_exp.input_stats import ColumnNorms, InputStats
from ecoflap_exp.models.seam import Group, Tower
from ecoflap_exp.options import NonNegativeFloat
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import NM, Counting, nm_mask, select_mask

#: elements of one tile of the assignment's (groups x groups x rows) comparison
CHUNK_ELEMENTS = 1 << 18


def ria_metric(weight: torch.Tensor, norms: InputStats, a: float) -> torch.Tensor:
    """RIA's importance of every weight (fp32), computed as lib/prune.py:239 computes it."""
    assert isinstance(norms, ColumnNorms)
    magnitude = weight.abs()
    # an all-zero column or row: 0 / 1 = 0 instead of the reference's 0 / 0 = NaN
    col_sums = magnitude.sum(dim=0)
    row_sums = magnitude.sum(dim=1, keepdim=True)
    relative = magnitude / col_sums.masked_fill(col_sums == 0, 1) + magnitude / row_sums.masked_fill(row_sums == 0, 1)
    return relative * norms.sq_norms.sqrt() ** a


def reallocated_order(metric: torch.Tensor, nm: NM) -> torch.Tensor:
    """Heuristic channel reallocation: position i x M + b of the new order holds the i-th channel of
    band b of the channels sorted by their summed metric (bands 0, 2, ... ascending, 1, 3, ...
    descending, so that strong and weak channels share every group)."""
    cols = metric.shape[1]
    ranked = torch.sort(metric.sum(dim=0), stable=True).indices
    band = cols // nm.m
    order = torch.empty_like(ranked)
    for b in range(nm.m):
        channels = ranked[b * band : (b + 1) * band]
        order[b :: nm.m] = channels if b % 2 == 0 else channels.flip(0)
    return order


def assignment_scores(permuted: torch.Tensor, nm: NM, c: int) -> torch.Tensor:
    """[receiving group r, offering group g]: the metric the N:M selection keeps, over all rows,
    when group g's channel at position c joins the other M-1 channels of group r.

    Beside the other values f_1 >= ... >= f_{M-1} of a row, a candidate v makes the N kept values
    sum to sum(f_1..f_{N-1}) + max(v, f_N) (the reference sorts each candidate strip instead)."""
    rows, cols = permuted.shape
    groups = cols // nm.m
    tiles = permuted.reshape(rows, groups, nm.m)
    others = torch.cat([tiles[:, :, :c], tiles[:, :, c + 1 :]], dim=2).sort(dim=2, descending=True).values
    kept = others[:, :, : nm.n - 1].sum(dim=(0, 2))  # per receiving group
    # (groups, rows), rows contiguous: the channel each group offers, and the N-th value it must beat
    candidates = tiles[:, :, c].t().contiguous()
    bar = others[:, :, nm.n - 1].t().contiguous()
    score = torch.empty(groups, groups, dtype=permuted.dtype, device=permuted.device)
    # tiles of the (r, g, rows) comparison small enough to stay in cache
    per_g = min(groups, max(1, CHUNK_ELEMENTS // rows))
    per_r = max(1, CHUNK_ELEMENTS // (rows * per_g))
    for r in range(0, groups, per_r):
        for g in range(0, groups, per_g):
            score[r : r + per_r, g : g + per_g] = torch.maximum(
                candidates[None, g : g + per_g], bar[r : r + per_r, None]).sum(dim=-1)
    return score + kept[:, None]


def assignment_refined(metric: torch.Tensor, order: torch.Tensor, nm: NM) -> torch.Tensor:
    """The reference's linear-sum-assignment rounds: for c = 0..M-1 in turn, the channels at
    position c are redistributed over the groups so that the total kept metric is largest."""
    groups = metric.shape[1] // nm.m
    for c in range(nm.m):
        score = assignment_scores(metric[:, order], nm, c)
        _, offered = linear_sum_assignment(score.cpu().numpy(), maximize=True)
        positions = torch.arange(groups, device=order.device) * nm.m + c
        order = order.clone()
        order[positions] = order[torch.as_tensor(offered, device=order.device) * nm.m + c]
    return order


def reallocated_nm_mask(metric: torch.Tensor, nm: NM, lsa: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The N:M mask chosen in the reallocated channel order, mapped back to the original columns,
    and that order: mask[:, order] is N:M."""
    order = reallocated_order(metric, nm)
    if lsa:
        order = assignment_refined(metric, order, nm)
    mask = torch.empty_like(metric, dtype=torch.bool)
    mask[:, order] = nm_mask(metric[:, order], nm)
    return mask, order


class RiaPruner(LocalPruner):
    name = "ria"

    def __init__(self, a: NonNegativeFloat = 0.5, group: Group = "matrix", reallocation: bool = False,
                 lsa: bool = False, count: Counting = "exact"):
        super().__init__(count)
        if lsa and not reallocation:
            raise UserError("pruner.lsa=true refines the channel reallocation (as the reference's --lsa); "
                            "set pruner.reallocation=true too")
        self.a = a
        self.group: Group = group
        self.reallocation = reallocation
        self.lsa = lsa

    def new_stats(self, cols: int, device: torch.device) -> ColumnNorms:
        return ColumnNorms(cols, device)

    def group_for(self, tower: Tower) -> Group:
        return self.group

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        assert stats is not None
        metric = ria_metric(weight, stats, self.a)
        if nm is not None and self.reallocation:
            mask, _ = reallocated_nm_mask(metric, nm, self.lsa)
        else:
            mask = select_mask(metric, sparsity, group or self.group, nm, self.count)
        weight.masked_fill_(mask, 0)
        return mask
