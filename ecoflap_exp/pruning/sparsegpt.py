"""SparseGPT (Frantar & Alistarh 2023): OBS reconstruction in column blocks.

Per matrix: H = 2/n sum X X^T, dampened by `percdamp` x mean(diag H); the upper Cholesky factor of
H^-1 drives column-by-column error compensation with lazy updates between blocks of
`blocksize` columns. Within each block the mask is chosen adaptively over the whole rows x block
tile from w^2 / [H^-1]_jj^2. Unlike the reference code (which prunes every weight "<= threshold",
one more than the target per block), each block prunes an exact share of the matrix's count, so
the matrix reaches the planned count exactly.
"""

from __future__ import annotations

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.pruning.base import InputStats, LocalPruner
from ecoflap_exp.pruning.masks import NM, select_mask


class Hessian(InputStats):
    def __init__(self, cols: int, device: torch.device):
        self.H = torch.zeros(cols, cols, device=device, dtype=torch.float32)

    def add(self, x: torch.Tensor) -> None:
        x, rescale = self.count_batch(x)
        self.H.mul_(rescale)
        x = x * (2 / self.samples) ** 0.5
        self.H.addmm_(x.t(), x)


def inverse_cholesky(H: torch.Tensor, percdamp: float, tries: int = 5) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, raising the damping until H is positive definite.
    Works on one cols x cols copy at a time (a 11008-column Hessian is 0.5 GB in fp32)."""
    diagonal = torch.diag(H).clone()
    dead = diagonal == 0
    diagonal[dead] = 1  # columns whose input is always zero: the weights there do not matter
    damp = percdamp * torch.mean(diagonal)
    for _ in range(tries):
        A = H.clone()
        A.diagonal().copy_(diagonal + damp)
        L, info = torch.linalg.cholesky_ex(A)
        del A
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U
        damp *= 10
    raise UserError(
        "SparseGPT: the input Hessian is not positive definite even with 10^4 x the damping; "
        "the calibration inputs are degenerate (NaN/inf activations?); check the calibration data "
        "or raise pruner.percdamp"
    )


class SparseGPTPruner(LocalPruner):
    def __init__(self, blocksize: int = 128, percdamp: float = 0.01):
        self.blocksize = blocksize
        self.percdamp = percdamp

    def new_stats(self, cols: int, device: torch.device) -> Hessian:
        return Hessian(cols, device)

    def prune(self, weight: torch.Tensor, stats: InputStats | None, count: int, nm: NM | None) -> torch.Tensor:
        assert isinstance(stats, Hessian)
        W = weight.float().clone()
        rows, cols = W.shape
        Hinv = inverse_cholesky(stats.H, self.percdamp)
        mask = torch.zeros_like(W, dtype=torch.bool)
        # N:M groups must not straddle two column blocks
        step = self.blocksize if nm is None else max(nm.m, self.blocksize // nm.m * nm.m)
        for i1 in range(0, cols, step):
            i2 = min(i1 + step, cols)
            W1 = W[:, i1:i2].clone()
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            if nm is None:
                # the block's share of the exact count: cumulative rounding keeps the total exact
                share = round(count * i2 / cols) - round(count * i1 / cols)
                mask1 = select_mask(W1.pow(2) / d.pow(2), share, "matrix")
            else:
                mask1 = select_mask(W1.pow(2) / d.pow(2), 0, nm=nm)
            Err1 = torch.zeros_like(W1)
            for i in range(i2 - i1):
                w = W1[:, i]
                q = w.masked_fill(mask1[:, i], 0)
                err = (w - q) / d[i]
                W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
                W1[:, i] = q
                Err1[:, i] = err
            W[:, i1:i2] = W1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
            mask[:, i1:i2] = mask1
        W[mask] = 0
        weight.copy_(W.to(weight.dtype))
        return mask
