"""Local pruners and mask selection against independent slow computations."""

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.pruning import masks
from ecoflap_exp.pruning.magnitude import MagnitudePruner
from ecoflap_exp.pruning.masks import NM, RowMetric, kth_smallest, parse_nm, planned_prune_count, select_mask, smallest
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner


def random_layer(rows=16, cols=64, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # correlated inputs with uneven column scales, as real activations have
    X = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    X = X * torch.linspace(0.1, 3.0, cols)
    return W, X


def run_pruner(pruner, W, X, sparsity=0.5, nm=None, group=None):
    W = W.clone()
    stats = pruner.new_stats(W.shape[1], W.device) if pruner.needs_inputs else None
    if stats is not None:
        for chunk in X.split(64):
            stats.add(chunk, 1)
    pruner.prepare(W, stats)
    mask = pruner.prune(W, stats, sparsity, nm, group or getattr(pruner, "group", None) or "row")
    return W, mask


def test_wanda_mask_equals_brute_force():
    W, X = random_layer()
    pruned, mask = run_pruner(WandaPruner("row"), W, X, 0.5)
    norms = [sum(float(X[t, j]) ** 2 for t in range(X.shape[0])) ** 0.5 for j in range(X.shape[1])]
    for i in range(W.shape[0]):
        metric = [abs(float(W[i, j])) * norms[j] for j in range(W.shape[1])]
        smallest = sorted(range(W.shape[1]), key=lambda j: metric[j])[: W.shape[1] // 2]
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == set(smallest)
    assert torch.equal(pruned[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(pruned[~mask], W[~mask])


def test_wanda_matrix_group_prunes_globally_smallest():
    W, X = random_layer()
    _, mask = run_pruner(WandaPruner("matrix"), W, X, 0.3)
    metric = W.abs() * X.pow(2).sum(0).sqrt()
    threshold = metric.flatten().sort().values[planned_prune_count(*W.shape, 0.3, None) - 1]
    assert torch.equal(mask, metric <= threshold)
    assert mask.sum(1).float().std() > 0  # rows differ: the comparison really is matrix-wide


def test_row_group_with_remainder_is_exact_and_prefers_smallest():
    metric = torch.tensor([[1.0, 2.0, 9.0], [1.0, 5.0, 9.0], [1.0, 3.0, 9.0]])
    mask = smallest(metric, 5, "row")
    # every row loses its smallest; the two leftover prunes go to the rows whose next is smallest
    assert mask.tolist() == [[True, True, False], [True, False, False], [True, True, False]]


@pytest.mark.parametrize("spec", ["2:4", "4:8"])
@pytest.mark.parametrize("pruner", [MagnitudePruner(), WandaPruner(), SparseGPTPruner()])
def test_nm_keeps_exactly_n_of_every_m(spec, pruner):
    nm = parse_nm(spec)
    W, X = random_layer(cols=128)
    pruned, mask = run_pruner(pruner, W, X, nm=nm)
    kept = (pruned != 0).reshape(W.shape[0], -1, nm.m).sum(-1)
    assert torch.all(kept == nm.n)
    assert torch.equal(pruned == 0, mask)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("pruner", [MagnitudePruner(), MagnitudePruner("row"), WandaPruner(),
                                    WandaPruner("matrix"), SparseGPTPruner(blocksize=32)])
def test_exact_sparsity(sparsity, pruner):
    W, X = random_layer(rows=10, cols=70)  # 700 weights: 0.3 -> 210, counts not divisible by rows
    pruned, mask = run_pruner(pruner, W, X, sparsity)
    assert int(mask.sum()) == round(700 * sparsity)
    assert int((pruned == 0).sum()) == round(700 * sparsity)


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude():
    W, X = random_layer(rows=32, cols=128, tokens=512)
    errors = {}
    for name, pruner in [("sparsegpt", SparseGPTPruner()), ("wanda", WandaPruner()),
                         ("magnitude", MagnitudePruner())]:
        pruned, _ = run_pruner(pruner, W, X, 0.5)
        errors[name] = torch.linalg.norm(X @ W.t() - X @ pruned.t()).item()
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_sparsegpt_with_no_sparsity_leaves_weights_nearly_unchanged():
    W, X = random_layer()
    pruned, mask = run_pruner(SparseGPTPruner(), W, X, 0.0)
    assert not mask.any()
    torch.testing.assert_close(pruned, W)


@pytest.mark.parametrize("spec", ["4:2", "2:2", "0:4", "2-4", "x"])
def test_bad_nm_is_a_clear_error(spec):
    with pytest.raises(UserError, match="N:M"):
        parse_nm(spec)


def test_nm_parse():
    assert parse_nm("2:4") == NM(2, 4) and parse_nm(None) is None
    assert NM(2, 4).sparsity == 0.5


@pytest.mark.parametrize("chunk", [masks.CHUNK, 8, 24])  # whole; a row a step; 3 rows (the last step 2)
@pytest.mark.parametrize("group", ["row", "matrix"])
@pytest.mark.parametrize("count", [0, 1, 7, 30, 64])
def test_selection_with_many_ties_equals_a_stable_sort(group, count, chunk, monkeypatch):
    monkeypatch.setattr(masks, "CHUNK", chunk)
    metric = torch.randint(0, 4, (8, 8), generator=torch.Generator().manual_seed(count)).float()
    expected = torch.zeros(64, dtype=torch.bool)
    if group == "matrix":
        expected[torch.argsort(metric.flatten(), stable=True)[:count]] = True
    else:
        per_row, extra = divmod(count, 8)
        order = torch.argsort(metric, dim=1, stable=True)
        expected = expected.reshape(8, 8)
        for r in range(8):
            expected[r, order[r, :per_row]] = True
        nxt = [float(metric[r, order[r, per_row]]) if per_row < 8 else float("inf") for r in range(8)]
        for r in sorted(range(8), key=lambda r: (nxt[r], r))[:extra]:
            expected[r, order[r, per_row]] = True
    assert torch.equal(smallest(metric, count, group), expected.reshape(8, 8))


@pytest.mark.parametrize("chunk", [masks.CHUNK, 70, 150])
@pytest.mark.parametrize("nm", [None, NM(2, 4)])
def test_reference_rows_and_nm_read_in_chunks_equal_locuslab_sort(chunk, nm, monkeypatch):
    """count=reference per row and N:M, taken a few rows at a time, against locuslab/wanda's
    prune_wanda: a stable sort of each row (or of each group of M) and its int(cols x p) / M-N first."""
    monkeypatch.setattr(masks, "CHUNK", chunk)
    metric = torch.randint(0, 6, (10, 72), generator=torch.Generator().manual_seed(1)).float()
    expected = torch.zeros_like(metric, dtype=torch.bool)
    if nm is None:
        expected.scatter_(1, torch.sort(metric, dim=-1, stable=True)[1][:, : int(72 * 0.5)], True)
    else:
        for ii in range(0, 72, nm.m):
            tmp = metric[:, ii : ii + nm.m]
            expected.scatter_(1, ii + torch.topk(tmp, nm.m - nm.n, dim=1, largest=False)[1], True)
    mask = select_mask(metric, 0.5, "row", nm, "reference")
    if nm is None:
        assert torch.equal(mask, expected)
    else:  # topk breaks ties by its own order: the same count per group and the same kept values
        assert torch.equal(mask.reshape(10, -1, 4).sum(-1), expected.reshape(10, -1, 4).sum(-1))
        assert torch.equal(metric.masked_fill(mask, -1).sort(1)[0], metric.masked_fill(expected, -1).sort(1)[0])


@pytest.mark.parametrize("pruner", [WandaPruner("row"), MagnitudePruner("row"), WandaPruner("matrix"),
                                    MagnitudePruner("matrix")])
@pytest.mark.parametrize("count", ["exact", "reference"])
def test_pruners_never_hold_the_whole_metric(pruner, count, monkeypatch):
    """The metric is computed a chunk of rows at a time (never a second fp32 copy of the matrix), by
    row or over the whole matrix: every call of the pruner's formula covers at most CHUNK weights,
    and the mask is the one the whole metric gives."""
    W, X = random_layer(rows=40, cols=64)
    pruner.count = count
    _, whole = run_pruner(pruner, W, X, 0.37)
    monkeypatch.setattr(masks, "CHUNK", 3 * 64)
    sizes = []
    original = masks.RowMetric.__init__

    def spying(self, shape, rows):
        original(self, shape, lambda at: sizes.append(len(rows(at))) or rows(at))

    monkeypatch.setattr(masks.RowMetric, "__init__", spying)
    _, chunked = run_pruner(pruner, W, X, 0.37)
    assert torch.equal(chunked, whole)
    assert max(sizes) <= 3 and sum(sizes) >= 40


@pytest.mark.parametrize("chunk", [64, 1000])
def test_kth_smallest_by_radix_selection_is_kthvalues(chunk, monkeypatch):
    """Two counting passes over the keys' 16-bit halves give torch.kthvalue's value, across signs,
    +-0, infinities, NaN of either sign bit (kthvalue puts every NaN last), ties and magnitudes from
    1e-30 to 1e30."""
    monkeypatch.setattr(masks, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    sign_bit_nan = torch.tensor([0xFFC00000 - 2**32], dtype=torch.int32).view(torch.float32)  # the CPU's 0 x inf
    for trial in range(80):
        rows, cols = (int(v) for v in torch.randint(1, 60, (2,), generator=g))
        values = torch.randn(rows * cols, generator=g) * 10.0 ** int(torch.randint(-30, 30, (1,), generator=g))
        if trial % 3 == 1:
            values = torch.randint(-3, 4, (rows * cols,), generator=g).float()
        if trial % 3 == 2:
            values[torch.rand(rows * cols, generator=g) < 0.3] = -0.0
            values[torch.rand(rows * cols, generator=g) < 0.1] = float("inf")
        if trial % 4 == 3:
            values[torch.rand(rows * cols, generator=g) < 0.2] = sign_bit_nan
            values[torch.rand(rows * cols, generator=g) < 0.1] = float("nan")
        k = int(torch.randint(1, rows * cols + 1, (1,), generator=g))
        metric = values.reshape(rows, cols)
        got, expected = kth_smallest(RowMetric.of(metric), k), metric.flatten().kthvalue(k).values
        assert got == expected or (got.isnan() and expected.isnan()), (trial, rows, cols, k)
