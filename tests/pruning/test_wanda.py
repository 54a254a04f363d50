"""Wanda against the reference: the reference count's mask, per-row counts (its column norms: test_input_stats)."""

import pytest
import torch

from ecoflap_exp.pruning import masks
from ecoflap_exp.pruning.magnitude import MagnitudePruner
from ecoflap_exp.pruning.wanda import WandaPruner
from tests.pruning.test_sparsegpt import layer, ours


@pytest.mark.parametrize("chunk", [masks.CHUNK, 3 * 70])  # the whole matrix at once; 3 rows a step (radix)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_reference_count_is_the_reference_mask(sparsity, dtype, chunk, monkeypatch):
    """locuslab/wanda's masks (|W| x ||X|| in fp32 from the weights in the model's dtype), whether the
    metric is read whole or a few rows at a time."""
    monkeypatch.setattr(masks, "CHUNK", chunk)
    W, X = layer(rows=10, cols=70, ties=True)  # 70 x 0.3 = 21: int() and round() agree; 700 x 0.3 too
    W = W.to(dtype)  # the tie values k/8 are exact in bf16
    metric = W.abs() * X.pow(2).sum(0).sqrt()
    _, row = ours(WandaPruner(count="reference"), W, X, sparsity, group="row")
    expected = torch.zeros_like(row)
    expected.scatter_(1, torch.sort(metric, dim=-1, stable=True).indices[:, : int(70 * sparsity)], True)
    assert torch.equal(row, expected)
    _, whole = ours(WandaPruner(count="reference"), W, X, sparsity, group="matrix")
    assert torch.equal(whole, metric <= torch.sort(metric.flatten()).values[int(700 * sparsity)])
    assert int(whole.sum()) > int(700 * sparsity)  # "<= threshold": at least one more than int(n p)
    _, magnitude = ours(MagnitudePruner(count="reference"), W, X, sparsity)
    assert torch.equal(magnitude, W.abs() <= torch.sort(W.abs().flatten()).values[int(700 * sparsity)])


def test_wanda_row_counts_differ_only_where_cols_times_p_is_fractional():
    W, X = layer(rows=8, cols=10)
    _, exact = ours(WandaPruner("row"), W, X, 0.35)
    _, reference = ours(WandaPruner("row", count="reference"), W, X, 0.35)
    assert int(exact.sum()) == 28 and int(reference.sum()) == 8 * 3  # round(80 x 0.35) vs 8 x int(3.5)
    assert torch.equal(reference, reference & exact)  # the reference's prunes are among ours


