"""SparseGPT (Frantar & Alistarh 2023): OBS reconstruction in column blocks, as the reference
(IST-DASLab/sparsegpt `fasterprune`).

Per matrix: H = 2/n sum X X^T. Weights of input columns that are always zero (diag H = 0) are
zeroed before any mask is chosen and their diagonal set to 1; H is dampened by `percdamp` x
mean(diag H) (`damping=ist`; `damping=ecoflap`, ECoFLaP's fork for its BLIP-2 and CLIP rows:
infinities clipped to H's 0.1% / 99.9% quantiles, the Cholesky tried undamped and the damping
added, again and again, only while it fails; the same for H^-1's upper factor with the damping
of its own diagonal); the upper Cholesky factor of H^-1 drives column-by-column error
compensation with lazy updates between blocks of `blocksize` columns. The mask is chosen adaptively from
w^2 / [H^-1]_jj^2 on the weights as the sweep has updated them: unstructured, over the whole
rows x block tile when the sweep enters a block; N:M, per group of M columns when the sweep
reaches the group's first column.

Counting: with `count=exact` each block prunes its share of the matrix's exact count (cumulative
rounding), so the matrix reaches the planned count; with `count=reference` each block prunes
every weight <= the value at index int(rows x block x p), as the reference does (one more per
block, or more with ties).
"""

from __future__ import annotations

from typing import Literal

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.input_stats import InputStats
from ecoflap_exp.models.seam import Group
from ecoflap_exp.options import Count, PositiveFloat
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import (
    CHUNK,
    NM,
    Counting,
    at_or_below_quantile,
    nm_mask,
    planned_prune_count,
    smallest,
)


class Hessian(InputStats):
    def __init__(self, cols: int, device: torch.device):
        self.H: torch.Tensor | None = torch.zeros(cols, cols, device=device, dtype=torch.float32)
        self.dead: torch.Tensor | None = None
        self.inverted: tuple[tuple[float, str], torch.Tensor] | None = None

    def accumulate(self, tokens: torch.Tensor, rescale: float) -> None:
        assert self.H is not None, "inputs added to a Hessian already inverted"
        self.H.mul_(rescale)
        x = tokens * (2 / self.samples) ** 0.5
        self.H.addmm_(x.t(), x)

    def dead_columns(self) -> torch.Tensor:
        """Input columns that were zero in every calibration token."""
        if self.dead is None:
            assert self.H is not None
            self.dead = torch.diag(self.H) == 0
        return self.dead

    def inverse(self, percdamp: float, damping: str = "ist") -> torch.Tensor:
        """The upper Cholesky factor of H^-1 (`damping` picks the reference), computed once for all
        the matrices that share these inputs (q, k and v; gate and up), where the reference inverts
        the same Hessian for each. The factor is computed in H's own memory, so H is gone after:
        a 11008-column Hessian is 0.5 GB in fp32, and on the CPU the inversion never holds a second
        one (on CUDA, torch's cholesky_inverse copies its input: two there)."""
        key = (percdamp, damping)
        if self.inverted is None:
            self.dead_columns()
            H, self.H = self.H, None
            assert H is not None
            invert = ecoflap_inverse_cholesky if damping == "ecoflap" else inverse_cholesky
            self.inverted = (key, invert(H, percdamp))
        if self.inverted[0] != key:
            raise RuntimeError(f"the Hessian was inverted with {self.inverted[0]}, then asked for {key}")
        return self.inverted[1]


def inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, damp = percdamp x mean(diag H), as the reference,
    computed in H's own memory (H is consumed): torch hands LAPACK a row-major matrix through a
    column-major copy, but H's transpose (a view) is column-major already, and equals H once H's
    upper triangle mirrors the lower one the reference's factorisation reads. So the three
    factorisations work in place, with the same bits as the reference's out-of-place calls, and the
    result is turned back to row-major in place. Like the reference, no second try: a Hessian that
    is not positive definite ends the run."""
    diagonal = torch.diag(H).clone()
    diagonal[diagonal == 0] = 1  # dead columns, as the reference: their weights are zeroed
    H.diagonal().copy_(diagonal + percdamp * torch.mean(diagonal))
    mirror_lower(H)
    A = H.mT
    info = torch.empty((), dtype=torch.int32, device=H.device)
    torch.linalg.cholesky_ex(A, out=(A, info))
    if info == 0:
        torch.cholesky_inverse(A, out=A)
        torch.linalg.cholesky_ex(A, upper=True, out=(A, info))
    if info != 0 or torch.isnan(H.diagonal()).any():
        raise UserError(
            f"SparseGPT: the input Hessian is not positive definite with pruner.percdamp={percdamp:g}; "
            f"the calibration inputs may be degenerate (NaN/inf activations?): check the calibration data or "
            f"raise pruner.percdamp (e.g. pruner.percdamp={percdamp * 10:g})")
    # H now holds the factor's transpose (its lower triangle; the upper is zero): mirror it up
    mirror_lower(H)
    return H.triu_()


def mirror_lower(A: torch.Tensor, chunk: int = CHUNK) -> None:
    """Set A's strict upper triangle to the transpose of its strict lower one, in place, a band of
    rows at a time (no temporary beyond `chunk` elements)."""
    n = A.shape[0]
    step = max(1, chunk // max(n, 1))
    for start in range(0, n, step):
        end = min(start + step, n)
        band = A[start:end, start:end]
        band.copy_(band.tril() + band.tril(-1).mT)
        A[start:end, end:].copy_(A[end:, start:end].mT)


def quantile(t: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(t, q), which the reference calls; past the 2^24 elements it takes (where the
    reference fails), the same linear interpolation between sorted neighbours."""
    if t.numel() <= 1 << 24:
        return torch.quantile(t, q)
    flat = t.flatten().sort().values
    rank = q * (flat.numel() - 1)
    low = int(rank)
    return torch.lerp(flat[low], flat[min(low + 1, flat.numel() - 1)], rank - low)


def clip_infinities(A: torch.Tensor) -> None:
    """ECoFLaP's fasterprune: +inf entries to the 99.9% quantile of the matrix, -inf to its 0.1%."""
    for sign, q in ((1, 0.999), (-1, 0.001)):
        where = torch.isinf(A) & (A * sign > 0)
        if where.any():
            A[where] = quantile(A, q)


def cholesky_damped_on_failure(A: torch.Tensor, damp: torch.Tensor, upper: bool, tries: int = 10_000) -> torch.Tensor:
    """ECoFLaP's loop: the Cholesky factor of A, adding `damp` to A's diagonal (in place, so it
    builds up) each time the factorisation fails or gives NaN."""
    for _ in range(tries):
        factor, info = torch.linalg.cholesky_ex(A, upper=upper)
        if info == 0 and not torch.isnan(factor).any():
            return factor
        A.diagonal().add_(damp)
    raise UserError("SparseGPT (damping=ecoflap): the input Hessian is not positive definite after 10^4 dampings; "
                    "the calibration inputs are degenerate (NaN/inf activations?)")


def ecoflap_inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """ECoFLaP's fasterprune (its LAVIS and CoOp forks): infinities clipped; the Cholesky of H
    tried undamped, percdamp x mean(diag H) added only while it fails; then the same for the upper
    factor of H^-1 with percdamp x mean(|diag H^-1|). H is consumed (H^-1 is written over it): its
    retries need the matrix they factorise intact, so this holds two at a time, not one."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    clip_infinities(H)
    L = cholesky_damped_on_failure(H, percdamp * torch.mean(torch.diag(H)), upper=False)
    torch.cholesky_inverse(L, out=L)  # L is column-major, so in place (out=H, row-major, would copy)
    Hinv = H.copy_(L)
    del L
    clip_infinities(Hinv)
    return cholesky_damped_on_failure(Hinv, percdamp * torch.mean(torch.diag(Hinv).abs()), upper=True)


#: ist: IST-DASLab, always damped; ecoflap: ECoFLaP's fork, damped only where the Cholesky fails
Damping = Literal["ist", "ecoflap"]


class SparseGPTPruner(LocalPruner):
    name = "sparsegpt"

    def __init__(self, blocksize: Count = 128, percdamp: PositiveFloat = 0.01, count: Counting = "exact",
                 damping: Damping = "ist"):
        super().__init__(count)
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.damping = damping

    def new_stats(self, cols: int, device: torch.device) -> Hessian:
        return Hessian(cols, device)

    def prepare(self, weight: torch.Tensor, stats: InputStats | None) -> None:
        assert isinstance(stats, Hessian)
        weight[:, stats.dead_columns()] = 0

    @torch.no_grad()
    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, nm: NM | None,
              group: Group | None) -> torch.Tensor:
        assert isinstance(stats, Hessian)
        # The sweep works on W^T (input columns as contiguous rows), so the rank-1 update of the
        # columns after i touches one contiguous slab, through one preallocated buffer: the same
        # products and differences as the reference's `W1[:, i:] -= err x Hinv1[i, i:]`, bit for
        # bit, without its rows x block temporary per column.
        WT = torch.empty(weight.shape[1], weight.shape[0], device=weight.device).copy_(weight.t())
        WT[stats.dead_columns()] = 0
        cols, rows = WT.shape
        count = planned_prune_count(rows, cols, sparsity, None)
        Hinv = stats.inverse(self.percdamp, self.damping)
        mask = torch.zeros(rows, cols, dtype=torch.bool, device=WT.device)
        # N:M groups must not straddle two column blocks
        step = self.blocksize if nm is None else max(nm.m, self.blocksize // nm.m * nm.m)
        update = torch.empty(min(step, cols), rows, device=WT.device)
        for i1 in range(0, cols, step):
            i2 = min(i1 + step, cols)
            W1 = WT[i1:i2]
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            mask1 = torch.zeros(rows, i2 - i1, dtype=torch.bool, device=WT.device)
            if nm is None:
                score = W1.t().pow(2) / d.pow(2)
                if self.count == "exact":
                    # the block's share of the exact count: cumulative rounding keeps the total exact
                    mask1 = smallest(score, round(count * i2 / cols) - round(count * i1 / cols), "matrix")
                else:
                    mask1 = at_or_below_quantile(score, sparsity)
            Err1 = torch.empty(i2 - i1, rows, device=WT.device)
            for i in range(i2 - i1):
                if nm is not None and i % nm.m == 0:
                    group_cols = slice(i, i + nm.m)
                    mask1[:, group_cols] = nm_mask(W1[group_cols].t().pow(2) / d[group_cols].pow(2), nm)
                q = W1[i].masked_fill(mask1[:, i], 0)
                torch.div(W1[i] - q, d[i], out=Err1[i])
                later = update[: i2 - i1 - i]
                torch.mul(Hinv1[i, i:].unsqueeze(1), Err1[i].unsqueeze(0), out=later)
                W1[i:].sub_(later)
                W1[i] = q
            WT[i2:].t().addmm_(Err1.t(), Hinv[i1:i2, i2:], alpha=-1)
            mask[:, i1:i2] = mask1
        W = WT.t()
        W.masked_fill_(mask, 0)
        weight.copy_(W)
        return mask
