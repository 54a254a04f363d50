"""The local pruners against slow, independent implementations of the reference algorithms, written
from the SparseGPT paper (Algorithm 1) and the reference codes' rules in reference/ecoflap.md:

- SparseGPT (IST-DASLab/sparsegpt `fasterprune`): weights of dead input columns (diag H = 0)
  zeroed before any mask is chosen and their diagonal set to 1; 1% damping; the upper Cholesky
  factor of H^-1; column by column, the OBS error spread over every later column at once (the
  reference's lazy block updates are the same sum); the unstructured mask chosen per block of
  columns when the sweep enters it, the N:M mask per group of M columns when the sweep reaches
  its first column, both from the weights as updated so far;
- counting: `exact` (each block its cumulative-rounding share of round(rows x cols x p)) or
  `reference` (every score <= the value at index int(n x p) of the sorted block; Wanda per row:
  int(cols x p) per row, stable order; Wanda per matrix and magnitude: "<= threshold").
Ties are broken by position (a stable sort), which both sides follow.
"""

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.pruning.masks import NM
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner, inverse_cholesky, mirror_lower


def layer(rows=24, cols=96, tokens=200, dead=(), ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.1
    if ties:  # a handful of values: many equal scores within a column, and across columns
        W = torch.randint(-3, 4, (rows, cols), generator=g).float() / 8
    X = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.2
    X[:, list(dead)] = 0
    return W, X


def stable_smallest(score, k):
    """Mask of the k smallest entries of a flattened score, ties by position."""
    flat = torch.zeros(score.numel(), dtype=torch.bool)
    flat[torch.sort(score.flatten(), stable=True).indices[:k]] = True
    return flat.reshape(score.shape)


def slow_sparsegpt(W, X, sparsity, nm=None, blocksize=32, percdamp=0.01, count="exact"):
    W = W.clone()
    rows, cols = W.shape
    H = 2 / 1 * X.t() @ X  # one sample: H = 2/n sum x x^T
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H = H + percdamp * torch.diag(H).mean() * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    d = torch.diag(Hinv)
    total = round(rows * cols * sparsity)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i in range(cols):
        if nm is None and i % blocksize == 0:
            j = min(i + blocksize, cols)
            score = W[:, i:j] ** 2 / d[i:j] ** 2
            if count == "exact":
                mask[:, i:j] = stable_smallest(score, round(total * j / cols) - round(total * i / cols))
            else:
                mask[:, i:j] = score <= torch.sort(score.flatten()).values[int(score.numel() * sparsity)]
        if nm is not None and i % nm.m == 0:
            score = W[:, i : i + nm.m] ** 2 / d[i : i + nm.m] ** 2
            for r in range(rows):
                mask[r, i + torch.sort(score[r], stable=True).indices[: nm.m - nm.n]] = True
        q = W[:, i].masked_fill(mask[:, i], 0)
        err = (W[:, i] - q) / Hinv[i, i]
        W[:, i:] -= err[:, None] * Hinv[i, i:][None, :]
        W[:, i] = q
    return W, mask


def ours(pruner, W, X, sparsity, nm=None, group=None):
    W = W.clone()
    stats = pruner.new_stats(W.shape[1], torch.device("cpu")) if pruner.needs_inputs else None
    if stats is not None:
        stats.add(X, 1)
    pruner.prepare(W, stats)
    return W, pruner.prune(W, stats, sparsity, nm, group)


CASES = {
    "50%": dict(sparsity=0.5), "70%": dict(sparsity=0.7), "2:4": dict(sparsity=0.5, nm=NM(2, 4)),
    "4:8": dict(sparsity=0.5, nm=NM(4, 8)),
}


@pytest.mark.parametrize("count", ["exact", "reference"])
@pytest.mark.parametrize("data", ["random", "dead columns", "tied scores"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparsegpt_equals_the_slow_reference(case, data, count):
    if CASES[case].get("nm") and count == "reference":
        pytest.skip("N:M has one count")
    W, X = layer(dead=(3, 4, 5, 6, 40, 77) if data == "dead columns" else (), ties=data == "tied scores")
    expected, expected_mask = slow_sparsegpt(W, X, count=count, **CASES[case])
    pruned, mask = ours(SparseGPTPruner(blocksize=32, count=count), W, X, **CASES[case])
    assert torch.equal(mask, expected_mask)
    assert torch.equal(pruned == 0, expected == 0)
    torch.testing.assert_close(pruned, expected, rtol=1e-4, atol=1e-5)
    if data == "dead columns":
        assert not pruned[:, [3, 4, 5, 6, 40, 77]].any()  # zeroed whatever the mask kept


def ist_inverse(H, percdamp):
    """IST-DASLab/sparsegpt fasterprune: damped once, then the three factorisations."""
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(H.shape[0])
    H[diag, diag] += damp
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def clip_inf(H):
    if (torch.isinf(H) * (H > 0)).float().sum() > 0:
        pos = torch.isinf(H) * (H > 0)
        H[pos] = torch.quantile(H, 0.999)
    if (torch.isinf(H) * (H < 0)).float().sum() > 0:
        pos = torch.isinf(H) * (H < 0)
        H[pos] = torch.quantile(H, 0.001)


def factorised_while_failing(H, damp, upper):
    """The fork's `while True: try: cholesky ... except: H[diag, diag] += damp` loop (both of its copies)."""
    diag = torch.arange(H.shape[0])
    while True:
        try:
            decompose_H = torch.linalg.cholesky(H, upper=upper)
            if not torch.isnan(decompose_H).any():
                return decompose_H
            H[diag, diag] += damp
        except RuntimeError:
            H[diag, diag] += damp


def ecoflap_inverse(H, percdamp):
    """ylsung/ECoFLaP's fasterprune (LAVIS and CoOp forks, 59dac0a): infinities clipped, the Cholesky
    tried undamped and the damping added only while it raises or gives NaN; then the same for H^-1."""
    clip_inf(H)
    H = factorised_while_failing(H, percdamp * torch.mean(torch.diag(H)), upper=False)
    H = torch.cholesky_inverse(H)
    clip_inf(H)
    return factorised_while_failing(H, percdamp * torch.mean(torch.diag(H).abs()), upper=True)


def ist_fasterprune(W, H, sparsity, blocksize, percdamp=0.01, inverse=ist_inverse):
    """IST-DASLab/sparsegpt `fasterprune` (unstructured) op for op, as its code runs it: the
    weights cast to float32 and back, the rank-1 update as err x Hinv1[i, i:] per column;
    `inverse`: ECoFLaP's fork's factorisations instead of IST's."""
    dtype, W, H = W.dtype, W.clone().float(), H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse(H, percdamp)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
        mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(24, 96), (64, 300)])
def test_sparsegpt_reference_count_is_the_reference_code_bit_for_bit(dtype, shape):
    """Given the same Hessian, our sweep (W^T in place, a shared inverse) and the reference's code
    give the same weights to the last bit, in the model's own dtype, dead columns included."""
    W, X = layer(*shape, tokens=400, dead=(3, 50))
    W = W.to(dtype)
    pruner = SparseGPTPruner(blocksize=32, count="reference")
    stats = pruner.new_stats(W.shape[1], torch.device("cpu"))
    stats.add(X, 4)
    expected = ist_fasterprune(W, stats.H, 0.6, blocksize=32)
    pruned = W.clone()
    pruner.prepare(pruned, stats)
    mask = pruner.prune(pruned, stats, 0.6, None, None)
    assert torch.equal(pruned, expected)
    assert torch.equal(mask | (W == 0), expected == 0)


@pytest.mark.parametrize("hessian", ["positive definite", "singular", "with infinities"])
def test_sparsegpt_with_ecoflaps_damping_is_its_fork_bit_for_bit(hessian):
    """damping=ecoflap: no damping where H factorises (so not IST's numbers), damping added until it
    does where H is singular (fewer tokens than columns), infinities clipped to H's quantiles."""
    W, X = layer(24, 96, tokens=400 if hessian != "singular" else 40, dead=(3,))
    pruner = SparseGPTPruner(blocksize=32, count="reference", damping="ecoflap")
    stats = pruner.new_stats(W.shape[1], torch.device("cpu"))
    stats.add(X, 4)
    if hessian == "with infinities":
        stats.H[7, 9] = stats.H[9, 7] = float("inf")
    H = stats.H.clone()  # our pruning consumes the Hessian
    expected = ist_fasterprune(W, H, 0.6, blocksize=32, inverse=ecoflap_inverse)
    pruned = W.clone()
    pruner.prepare(pruned, stats)
    pruner.prune(pruned, stats, 0.6, None, None)
    assert torch.equal(pruned, expected)
    if hessian == "positive definite":
        ist = ist_fasterprune(W, H, 0.6, blocksize=32)
        assert not torch.equal(ist, expected)


def test_sparsegpt_reference_count_prunes_one_more_per_block():
    W, X = layer()
    _, exact = ours(SparseGPTPruner(blocksize=32), W, X, 0.5)
    _, reference = ours(SparseGPTPruner(blocksize=32, count="reference"), W, X, 0.5)
    assert int(exact.sum()) == 24 * 96 // 2 and int(reference.sum()) == 24 * 96 // 2 + 3  # 3 blocks of 32 columns


@pytest.mark.parametrize("cols", [96, 300])
def test_inverse_in_place_reads_the_lower_triangle_as_the_reference(cols):
    """The factor is computed in H's own memory (no second cols x cols matrix) and equals IST's
    out-of-place factorisations bit for bit, even where H's triangles differ in the last bits (a
    GPU's X^T X need not be exactly symmetric): LAPACK reads the lower triangle, as the reference's
    torch.linalg.cholesky does."""
    _, X = layer(cols=cols, tokens=400, dead=(3,))
    H = X.t() @ X
    H += torch.triu(H, 1) * 2**-20  # the upper triangle off by a few ulps
    assert not torch.equal(H, H.t())
    dead = torch.diag(H) == 0
    reference = H.clone()
    reference[dead, dead] = 1
    expected = ist_inverse(reference, 0.01)
    storage = H.data_ptr()
    U = inverse_cholesky(H, 0.01)
    assert U.data_ptr() == storage and U.is_contiguous()
    assert torch.equal(U, expected)


def test_mirror_lower_in_bands():
    A = torch.randn(37, 37)
    expected = A.tril() + A.tril(-1).t()
    mirror_lower(A, chunk=37 * 5)  # bands of 5 rows, the last of 2
    assert torch.equal(A, expected)


def test_a_hessian_that_is_not_positive_definite_is_one_clear_error():
    H = torch.zeros(4, 4)
    H[0, 1] = H[1, 0] = 5.0  # indefinite even after 1% damping
    H.diagonal().fill_(1.0)
    with pytest.raises(UserError, match="not positive definite with pruner.percdamp=0.01.*pruner.percdamp=0.1"):
        inverse_cholesky(H, 0.01)
