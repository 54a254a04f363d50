"""Intrinsic dimension estimators (TwoNN, MLE, the block variant) against scikit-dimension and by
hand; exact neighbours in memory and on disk."""

import numpy as np
import pytest
import torch

from ecoflap_exp.scoring import id_estimators as estimators

skdim = pytest.importorskip("skdim")


@pytest.mark.parametrize(("name", "dim", "d"), [("M1_Sphere", 11, 10), ("M2_Affine_3to5", 5, 3), ("M7_Roll", 3, 2)])
def test_twonn_matches_scikit_dimension_on_benchmark_manifolds(name, dim, d):
    X = skdim.datasets.BenchmarkManifolds(random_state=0).generate(name, 2000, dim, d)
    assert estimators.twonn(torch.from_numpy(X)) == pytest.approx(skdim.id.TwoNN().fit(X).dimension_, rel=1e-6)


def test_twonn_matches_the_reference_table():
    X = skdim.datasets.BenchmarkManifolds(random_state=0).generate("M1_Sphere", 2000, 11, 10)
    assert estimators.twonn(torch.from_numpy(X)) == pytest.approx(9.47, abs=0.005)  # the table rounds to 2 decimals


@pytest.mark.parametrize("seed", [1, 2])
def test_twonn_matches_scikit_dimension_on_fresh_manifolds(seed):
    rng = np.random.default_rng(seed)
    cube = rng.random((1500, 6))
    X = cube @ np.linalg.qr(rng.standard_normal((64, 64)))[0][:6]  # a 6-d cube inside R^64
    ours = estimators.twonn(torch.from_numpy(X))
    assert ours == pytest.approx(skdim.id.TwoNN().fit(X).dimension_, rel=1e-3)
    assert 5 < ours < 6.5


def test_mle_and_block_variant_on_the_sphere():
    X = torch.from_numpy(skdim.datasets.BenchmarkManifolds(random_state=0).generate("M1_Sphere", 2000, 11, 10))
    assert estimators.mle(X) == pytest.approx(9.34, abs=0.01)  # dadapy "ml" in reference/id_pruning.md
    assert estimators.twonn_blocks(X) == pytest.approx(9.18, abs=0.15)  # random splits differ from the reference's


def test_mle_by_hand():
    # points on a line: 0, 1, 3, 6 -> r1 = 1, 1, 2, 3 and r2 = 3, 2, 3, 5
    X = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    mu = torch.tensor([3.0, 2.0, 1.5, 5 / 3])
    assert estimators.mle(X) == pytest.approx(3 / float(torch.log(mu).sum()))


def test_duplicates_give_a_finite_estimate():
    rng = np.random.default_rng(0)
    X = rng.random((1000, 5))
    with_copies = np.concatenate([X, X[:50]])
    ours = estimators.twonn(torch.from_numpy(with_copies))
    assert np.isfinite(ours)
    assert ours == pytest.approx(skdim.id.TwoNN().fit(np.unique(with_copies, axis=0)).dimension_, rel=1e-6)
    assert np.isfinite(estimators.twonn_blocks(torch.from_numpy(with_copies)))
    assert np.isfinite(estimators.mle(torch.from_numpy(with_copies)))


def exact_ratios(points):
    """r1, r2 of each distinct row, from the full float64 distance matrix of differences (the slow
    reference: no Gram matrix, no candidates)."""
    points = points.double()
    D = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    D.fill_diagonal_(float("inf"))
    r = torch.topk(D, 2, dim=1, largest=False).values
    return r[:, 0], r[:, 1]


def slow_twonn_blocks(points, max_blocks=20, seed=0):
    """ID_VL_Pruning's block average on the full distance matrix, as the estimator describes it."""
    D = torch.cdist(points.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    n = len(D)
    generator = torch.Generator().manual_seed(seed)
    means = []
    for b in range(1, max_blocks + 1):
        size, order = n // b, torch.randperm(n, generator=generator)
        dims = []
        for k in range(b):
            idx = order[k * size : (k + 1) * size]
            sub = D[idx][:, idx].clone()
            sub.fill_diagonal_(float("inf"))
            r = torch.topk(sub, 2, dim=1, largest=False).values
            mu = torch.sort(r[r[:, 0] < r[:, 1], 1] / r[r[:, 0] < r[:, 1], 0]).values
            keep = len(mu) - 2
            x = torch.log(mu[:keep])
            y = -torch.log1p(-torch.arange(1, keep + 1, dtype=torch.float64) / len(mu))
            dims.append(float((x * y).sum() / (x * x).sum()))
        means.append(sum(dims) / b)
    return sum(means) / len(means)


def test_neighbours_are_exact_and_float32_decides_most_of_them():
    """Gaussian points in 768 dimensions (their distances crowd together) and points on a sphere:
    the two nearest distances equal the full float64 matrix's, and the float32 ranking settled
    nearly every point with its 4 candidates."""
    g = torch.Generator().manual_seed(0)
    for X in (torch.randn(600, 768, generator=g),
              torch.from_numpy(skdim.datasets.BenchmarkManifolds(random_state=0).generate("M1_Sphere", 600, 11, 10))):
        neighbours = estimators.neighbours_of(X)
        r1, r2 = neighbours.ratios()
        e1, e2 = exact_ratios(X)
        torch.testing.assert_close(r1, e1, rtol=1e-12, atol=0)
        torch.testing.assert_close(r2, e2, rtol=1e-12, atol=0)
        assert neighbours.extra_pairs < 0.05 * len(X)


def test_twonn_blocks_equals_the_full_matrix_version():
    X = torch.from_numpy(skdim.datasets.BenchmarkManifolds(random_state=0).generate("M1_Sphere", 400, 11, 10))
    assert estimators.twonn_blocks(X) == pytest.approx(slow_twonn_blocks(X), rel=1e-9)


def test_vector_store_neighbours_are_exact_in_memory_and_on_disk(tmp_path):
    """Long float32 vectors far from the origin with small differences, where a float32 Gram loses
    the distances; batches of different token counts are zero-padded (which a centred float32
    Gram also gets wrong); an exact copy is dropped; files give the same result as memory. The
    float32 bounds cannot decide here, so the near pairs are measured exactly."""
    g = torch.Generator().manual_seed(0)
    X = 100 + 1e-2 * torch.randn(30, 12, 64, generator=g)
    X[20:, 9:] = 0  # the last batch is 9 tokens long
    X[29] = X[21]
    flat = X[:29].reshape(29, -1)
    expected = exact_ratios(flat)
    stores = [estimators.VectorStore(torch.device("cpu")), estimators.VectorStore(torch.device("cpu"), tmp_path)]
    for store in stores:
        for part in (X[:8], X[8:20], X[20:, :9]):
            store.add(part)
    in_memory, on_disk = (store.neighbours() for store in stores)
    assert len(list(tmp_path.glob("*.bin"))) == 3
    assert in_memory.distinct.tolist() == list(range(29)) and in_memory.extra_pairs > 0
    for ours, exact in zip(in_memory.ratios(), expected, strict=True):
        torch.testing.assert_close(ours, exact, rtol=1e-12, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(in_memory.ratios(), on_disk.ratios(), strict=True))
    halves = [estimators.VectorStore(torch.device("cpu")),
              estimators.VectorStore(torch.device("cpu"), tmp_path / "bf16")]
    (tmp_path / "bf16").mkdir()
    Y = torch.randn(30, 12, 64, generator=g).bfloat16()  # bf16 outputs are kept as they are, bit for bit
    Y[20:, 9:] = 0
    Y[29] = Y[21]
    for store in halves:
        for part in (Y[:8], Y[8:20], Y[20:, :9]):
            store.add(part)
    assert halves[0].batches[0].path is None and halves[1].batches[0].data is None
    bf16 = [store.neighbours() for store in halves]
    for ours, exact in zip(bf16[0].ratios(), exact_ratios(Y[:29].reshape(29, -1)), strict=True):
        torch.testing.assert_close(ours, exact, rtol=1e-12, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(bf16[0].ratios(), bf16[1].ratios(), strict=True))
    naive = (flat.square().sum(1)[:, None] + flat.square().sum(1)[None] - 2 * flat @ flat.t()).clamp_min(0).sqrt()
    exact = torch.cdist(flat.double(), flat.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert float(((naive.double() - exact).abs() / exact.clamp_min(1e-12)).max()) > 0.1


def test_twonn_equals_scikit_dimension_within_1e_6_on_gaussian_points():
    """The benchmark's data (scripts/bench_twonn.py): Gaussian float32 points in 768 dimensions, 2100
    of them, so the Gram matrix takes five row blocks, the last one partial."""
    X = np.random.default_rng(3).standard_normal((2100, 768)).astype(np.float32)
    ours, theirs = estimators.twonn(torch.from_numpy(X)), skdim.id.TwoNN().fit(X).dimension_
    assert abs(ours - theirs) <= 1e-6 * theirs


def centred_gram64(X):
    """The float64 Gram matrix of (points, tokens, features) centred over the points at each token,
    summed over the tokens: what gram32 approximates in float32."""
    X = X.double()
    centred = X - X.mean(0)
    return torch.einsum("itf,jtf->ij", centred, centred)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_the_gram_matrix_through_onednn_equals_torch_blas_and_float64(monkeypatch):
    """Three token positions accumulated (the first overwrites the uninitialised matrix, the others
    add), 1100 points in three row blocks: oneDNN's products and torch's BLAS both stay within float32
    rounding of the float64 Gram matrix, far inside the tolerance the bounds allow, and give the same
    exact neighbours."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1100, 3, 40, generator=g) + 5
    store = estimators.VectorStore(torch.device("cpu"))
    store.add(X)
    assert estimators.onednn_products(torch.device("cpu"))
    onednn, onednn_ratios = store.gram32(), store.neighbours().ratios()
    monkeypatch.setattr(estimators, "onednn_products", lambda device: False)
    blas, blas_ratios = store.gram32(), store.neighbours().ratios()
    exact = centred_gram64(X)
    norms = exact.diagonal()
    scale = norms[:, None] + norms[None]
    for gram in (onednn, blas):
        assert float(((gram.double() - exact).abs() / scale).max()) < estimators.GRAM32_TOLERANCE / 1000
    expected = exact_ratios(X.reshape(1100, -1))
    for ratios in (onednn_ratios, blas_ratios):
        for ours, reference in zip(ratios, expected, strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)


def test_below_highest_float32_matmul_precision_the_gram_stays_on_torch_blas():
    """A lower precision may let oneDNN compute in bfloat16, outside GRAM32_TOLERANCE's budget."""
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not estimators.onednn_products(torch.device("cpu"))
    finally:
        torch.set_float32_matmul_precision(before)
    assert not estimators.onednn_products(torch.device("meta"))  # not the CPU
