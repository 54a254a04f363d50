"""Mask selection shared by every local pruner: row or matrix groups, N:M, two counting rules.

A mask is a bool tensor shaped like the weight, True where the weight is pruned. With the `exact`
rule (the default) a selection prunes exactly the planned number of weights, ties broken by
position: the plan is the contract the verification step checks. The `reference` rule counts as
the reference codes do (Wanda's per-row int(cols x p); "<= the value at index int(n x p)" over a
whole matrix), so their masks can be reproduced bit for bit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Group

#: how many weights a mask removes: exactly the asked share, or as the reference code counts them
Counting = Literal["exact", "reference"]


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


def nm_mask(metric: torch.Tensor, nm: NM) -> torch.Tensor:
    """In each row, in every block of M consecutive columns, the M-N smallest (ties by position)."""
    rows, cols = metric.shape
    tiles = metric.reshape(rows, cols // nm.m, nm.m)
    order = torch.argsort(tiles, dim=-1, stable=True)[..., : nm.m - nm.n]
    mask = torch.zeros_like(tiles, dtype=torch.bool)
    return mask.scatter_(-1, order, True).reshape(rows, cols)


def smallest(metric: torch.Tensor, count: int, group: Group = "row") -> torch.Tensor:
    """Exactly the `count` weights with the smallest metric (ties broken by position).

    - group="matrix": the `count` smallest of the whole matrix.
    - group="row": every row loses count // rows of its smallest; the count % rows remaining
      prunes go to the rows whose next-smallest weight is smallest, so the total is exact.
    """
    rows, cols = metric.shape
    if not 0 <= count <= rows * cols:
        raise ValueError(f"cannot prune {count} of {rows * cols} weights")
    if count == 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    if group == "matrix":
        return smallest_per_row(metric.reshape(1, -1), count).reshape(rows, cols)
    if group != "row":
        raise UserError(f"comparison group {group!r} is unknown; use 'row' or 'matrix'")
    per_row, extra = divmod(count, rows)
    mask = smallest_per_row(metric, per_row) if per_row else torch.zeros_like(metric, dtype=torch.bool)
    if extra:
        following = metric.kthvalue(per_row + 1, dim=1).values  # each row's next candidate
        chosen = torch.argsort(following, stable=True)[:extra]
        candidates = (metric[chosen] == following[chosen, None]) & ~mask[chosen]
        mask[chosen, candidates.int().argmax(1)] = True
    return mask


def at_or_below_quantile(metric: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference codes' whole-matrix rule: every weight whose metric is <= the value at index
    int(numel x sparsity) of the sorted metric (so at least one more than int(numel x sparsity))."""
    flat = metric.reshape(-1)
    threshold = flat.kthvalue(int(flat.numel() * sparsity) + 1).values
    return metric <= threshold


def select_mask(metric: torch.Tensor, sparsity: float, group: Group = "row", nm: NM | None = None,
                count: Counting = "exact") -> torch.Tensor:
    """Prune the weights with the smallest `metric` at `sparsity` (N:M: its pattern, sparsity
    ignored), counted by the `count` rule."""
    rows, cols = metric.shape
    if nm is not None:
        return nm_mask(metric, nm)
    if count == "exact":
        return smallest(metric, planned_prune_count(rows, cols, sparsity, None), group)
    if group == "row":
        return smallest_per_row(metric, int(cols * sparsity)) if int(cols * sparsity) else torch.zeros_like(
            metric, dtype=torch.bool)
    return at_or_below_quantile(metric, sparsity)
