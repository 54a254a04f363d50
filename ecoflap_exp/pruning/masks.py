"""Mask selection shared by every local pruner: row or matrix groups, N:M, two counting rules.

A mask is a bool tensor shaped like the weight, True where the weight is pruned. With the `exact`
rule (the default) a selection prunes exactly the planned number of weights, ties broken by
position: the plan is the contract the verification step checks. The `reference` rule counts as
the reference codes do (Wanda's per-row int(cols x p); "<= the value at index int(n x p)" over a
whole matrix), so their masks can be reproduced bit for bit.

Memory: torch's kthvalue and sort copy what they select from and add int64 indices (12 bytes a
weight beside the metric's 4), 3.8 GB for a whole 28672 x 8192 matrix. So every selection takes the
metric a chunk of rows at a time (`RowMetric`, `CHUNK` weights a step) and never holds it whole:
row groups and N:M choose each row from that row alone; a whole-matrix comparison finds its
threshold by radix selection (`kth_smallest`: two counting passes over 16-bit halves of the values'
bits) and then marks the weights below it chunk by chunk. The pass adds the bool mask (1 byte a
weight) and a few MB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Group

#: how many weights a mask removes: exactly the asked share, or as the reference code counts them
Counting = Literal["exact", "reference"]

#: weights of a metric selected from at a time (about 16 MB of temporaries)
CHUNK = 1 << 20


@dataclass(frozen=True)
class RowMetric:
    """A (rows x cols) fp32 metric computed for the rows asked for (a slice or an index tensor), so
    that a row-wise selection never holds it whole: a pruner passes its formula over its weight's rows."""

    shape: tuple[int, int]
    rows: Callable[[slice | torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, metric: torch.Tensor | RowMetric) -> RowMetric:
        """An already computed metric (a RowMetric stays as it is)."""
        if isinstance(metric, RowMetric):
            return metric
        return cls((metric.shape[0], metric.shape[1]), metric.__getitem__)

    @classmethod
    def over(cls, weight: torch.Tensor, formula: Callable[[torch.Tensor], torch.Tensor]) -> RowMetric:
        """`formula` applied to the rows of `weight` asked for."""
        return cls((weight.shape[0], weight.shape[1]), lambda rows: formula(weight[rows]))

    def whole(self) -> torch.Tensor:
        return self.rows(slice(None))

    def empty_mask(self) -> torch.Tensor:
        """An all-False mask of the metric's shape, on its device."""
        return torch.zeros(self.shape, dtype=torch.bool, device=self.rows(slice(0, 0)).device)

    def chunks(self) -> Iterator[slice]:
        """Consecutive row ranges of about CHUNK weights each."""
        rows, cols = self.shape
        step = max(1, CHUNK // max(cols, 1))
        return (slice(start, min(start + step, rows)) for start in range(0, rows, step))


@dataclass(frozen=True)
class NM:
    """Semi-structured sparsity: keep `n` of every `m` consecutive weights of a row."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def check_sparsity(value: Any, key: str = "sparsity") -> float:
    """A sparsity as a float in [0, 1), or one UserError naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise UserError(f"{key}={value} is outside [0, 1); pass a fraction such as {key}=0.5")
    return float(value)


def parse_nm(spec: str | None) -> NM | None:
    """'2:4' -> NM(2, 4); None or '' -> None (unstructured)."""
    if spec in (None, "", "none", "unstructured"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
    if not match:
        raise UserError(f"nm={spec!r} is not of the form N:M (e.g. nm=2:4); use nm=null for unstructured")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UserError(f"nm={spec}: N:M keeps N of every M weights, so it needs 0 < N < M (e.g. 2:4, 4:8)")
    return NM(n, m)


def nm_sparsity(nm: NM, sparsity: float | None) -> float:
    """The sparsity an N:M pattern fixes; an explicit different one is an error."""
    if sparsity is not None and not math.isclose(sparsity, nm.sparsity):
        raise UserError(f"nm={nm} fixes the sparsity at {nm.sparsity:g}, but sparsity={sparsity:g}; leave sparsity "
                        f"out with nm (it follows the pattern)")
    return nm.sparsity


def planned_prune_count(rows: int, cols: int, sparsity: float, nm: NM | None) -> int:
    """Number of weights a (rows x cols) matrix loses under the plan."""
    if nm is not None:
        return rows * (cols // nm.m) * (nm.m - nm.n)
    return round(rows * cols * sparsity)


def check_nm_fits(name: str, cols: int, nm: NM | None) -> None:
    if nm is not None and cols % nm.m:
        raise UserError(
            f"nm={nm}: matrix {name} has {cols} input columns, not a multiple of {nm.m}; "
            f"choose an M that divides it or prune unstructured (nm=null)"
        )


def smallest_per_row(metric: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly the k smallest entries of every row (ties taken by position). A selection
    (kthvalue), not a sort, so it stays linear in the row length."""
    kth = metric.kthvalue(k, dim=1, keepdim=True).values
    mask = metric < kth
    ties = metric == kth
    need = k - mask.sum(1, keepdim=True)
    # only rows with more ties than places need the positional cut (cumsum is 8 bytes a weight)
    crowded = (ties.sum(1, keepdim=True) > need).squeeze(1).nonzero().squeeze(1)
    if len(crowded):
        ties[crowded] &= ties[crowded].cumsum(1) <= need[crowded]
    return mask.logical_or_(ties)


def sortable_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys in the order of the float32 values: their IEEE bits, a negative value's magnitude bits
    flipped (so -0.0 sorts just below +0.0, which compare equal); every NaN, whatever its sign bit (the
    CPU's 0 x inf sets it), the largest key, as torch.kthvalue puts NaN last."""
    values = values.float().contiguous()
    bits = values.view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return keys.masked_fill_(values.isnan(), 0x7FFFFFFF)


def kth_smallest(metric: RowMetric, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) value of the whole metric, the one torch.kthvalue gives. A metric larger
    than a chunk is read a chunk of rows at a time, twice: radix selection counts the keys' upper 16 bits,
    which fixes the k-th key's upper half, then the lower 16 bits of the keys with that upper half."""
    rows, cols = metric.shape
    if rows * cols <= CHUNK:
        return metric.whole().reshape(-1).kthvalue(k).values
    half = 1 << 16

    def histogram(digits: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Counts of the 16-bit `digits` of every key, over the chunks."""
        chunks = (digits(sortable_keys(metric.rows(chunk)).flatten()) for chunk in metric.chunks())
        return sum(torch.bincount(d, minlength=half) for d in chunks)  # type: ignore[return-value]

    counts = histogram(lambda keys: (keys >> 16) + half // 2)
    cumulative = counts.cumsum(0)
    upper_half = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[upper_half] - counts[upper_half])
    counts = histogram(lambda keys: keys[(keys >> 16) == upper_half - half // 2] & 0xFFFF)
    key = ((upper_half - half // 2) << 16) | int(torch.searchsorted(counts.cumsum(0), k - below))
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return torch.tensor(bits, dtype=torch.int32, device=counts.device).view(torch.float32)


def nm_mask(metric: torch.Tensor, nm: NM) -> torch.Tensor:
    """In each row, in every block of M consecutive columns, the M-N smallest (ties by position)."""
    rows, cols = metric.shape
    tiles = metric.reshape(rows, cols // nm.m, nm.m)
    order = torch.argsort(tiles, dim=-1, stable=True)[..., : nm.m - nm.n]
    mask = torch.zeros_like(tiles, dtype=torch.bool)
    return mask.scatter_(-1, order, True).reshape(rows, cols)


def smallest(metric: torch.Tensor | RowMetric, count: int, group: Group = "row") -> torch.Tensor:
    """Exactly the `count` weights with the smallest metric (ties broken by position).

    - group="matrix": the `count` smallest of the whole matrix.
    - group="row": every row loses count // rows of its smallest; the count % rows remaining
      prunes go to the rows whose next-smallest weight is smallest, so the total is exact.
    """
    metric = RowMetric.of(metric)
    rows, cols = metric.shape
    if not 0 <= count <= rows * cols:
        raise ValueError(f"cannot prune {count} of {rows * cols} weights")
    if count == 0:
        return metric.empty_mask()
    if group == "matrix":
        threshold = kth_smallest(metric, count)
        # the weights below the threshold, then as many of those equal to it as the count needs, by position
        need = count - sum(int(torch.count_nonzero(metric.rows(chunk) < threshold)) for chunk in metric.chunks())
        mask = metric.empty_mask()
        for chunk in metric.chunks():
            values = metric.rows(chunk)
            mask[chunk] = values < threshold
            if need:
                ties = values == threshold
                ties &= ties.reshape(-1).cumsum(0).reshape(ties.shape) <= need
                need -= int(torch.count_nonzero(ties))
                mask[chunk] |= ties
        return mask
    if group != "row":
        raise UserError(f"comparison group {group!r} is unknown; use 'row' or 'matrix'")
    per_row, extra = divmod(count, rows)
    mask, following = metric.empty_mask(), []
    for chunk in metric.chunks():
        values = metric.rows(chunk)
        if per_row:
            mask[chunk] = smallest_per_row(values, per_row)
        if extra:
            following.append(values.kthvalue(per_row + 1, dim=1).values)  # each row's next candidate
    if extra:
        next_values = torch.cat(following)
        chosen = torch.argsort(next_values, stable=True)[:extra]
        step = max(1, CHUNK // cols)
        for start in range(0, extra, step):
            these = chosen[start : start + step]
            candidates = (metric.rows(these) == next_values[these, None]) & ~mask[these]
            mask[these, candidates.int().argmax(1)] = True
    return mask


def at_or_below_quantile(metric: torch.Tensor | RowMetric, sparsity: float) -> torch.Tensor:
    """The reference codes' whole-matrix rule: every weight whose metric is <= the value at index
    int(numel x sparsity) of the sorted metric (so at least one more than int(numel x sparsity))."""
    metric = RowMetric.of(metric)
    threshold = kth_smallest(metric, int(metric.shape[0] * metric.shape[1] * sparsity) + 1)
    mask = metric.empty_mask()
    for chunk in metric.chunks():
        mask[chunk] = metric.rows(chunk) <= threshold
    return mask


def select_mask(metric: torch.Tensor | RowMetric, sparsity: float, group: Group = "row", nm: NM | None = None,
                count: Counting = "exact") -> torch.Tensor:
    """Prune the weights with the smallest `metric` at `sparsity` (N:M: its pattern, sparsity
    ignored), counted by the `count` rule. Row groups and N:M read the metric a chunk of rows at a time."""
    metric = RowMetric.of(metric)
    rows, cols = metric.shape
    if count == "exact" and nm is None:
        return smallest(metric, planned_prune_count(rows, cols, sparsity, None), group)
    if group == "matrix" and nm is None:
        return at_or_below_quantile(metric, sparsity)
    mask = metric.empty_mask()
    if nm is None and not int(cols * sparsity):
        return mask
    for chunk in metric.chunks():
        values = metric.rows(chunk)
        mask[chunk] = nm_mask(values, nm) if nm is not None else smallest_per_row(values, int(cols * sparsity))
    return mask
