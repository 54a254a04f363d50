"""Mask selection shared by every local pruner: exact counts, row or matrix groups, N:M.

A mask is a bool tensor shaped like the weight, True where the weight is pruned. Every selection
here prunes exactly the planned number of weights (no "<= threshold" ties that prune one more):
the plan is the contract the verification step checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from ecoflap_exp.errors import UserError

Group = Literal["row", "matrix"]


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


def select_mask(metric: torch.Tensor, count: int, group: Group = "row", nm: NM | None = None) -> torch.Tensor:
    """Prune the weights with the smallest `metric`.

    - nm: in each row, in every block of M consecutive columns, prune the M-N smallest (count is
      implied and ignored).
    - group="matrix": the `count` smallest of the whole matrix.
    - group="row": every row loses count // rows of its smallest; the count % rows remaining
      prunes go to the rows whose next-smallest weight is smallest, so the total is exact.
    Ties break by position, so a mask is deterministic.
    """
    rows, cols = metric.shape
    if nm is not None:
        tiles = metric.reshape(rows, cols // nm.m, nm.m)
        order = torch.argsort(tiles, dim=-1, stable=True)[..., : nm.m - nm.n]
        mask = torch.zeros_like(tiles, dtype=torch.bool)
        return mask.scatter_(-1, order, True).reshape(rows, cols)
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
