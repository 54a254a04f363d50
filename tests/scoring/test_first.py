"""First-order (gradient x weight) block scores against a slow per-parameter reference."""

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.scoring.first import FirstOrderScorer
from tests.scoring.test_intrinsic_dim import batches_for, llama


def test_first_order_matches_a_slow_per_parameter_reference():
    adapter = llama()
    batches = batches_for(adapter)
    scores = FirstOrderScorer().scores(adapter, batches)
    abs_grads = {m.name: torch.zeros_like(m.weight) for m in adapter.matrices()}
    for batch in batches:
        matrices = list(adapter.matrices())
        for m, g in zip(matrices, torch.autograd.grad(adapter.loss(batch), [m.param for m in matrices]), strict=True):
            abs_grads[m.name] += g.abs() / len(batches)
    for block in adapter.blocks():
        expected = sum(float((m.weight.abs() * abs_grads[m.name]).sum()) for m in block.matrices)
        assert scores[block.name] == pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in adapter.model.parameters())
    assert all(p.requires_grad for p in adapter.model.parameters())
    avg = FirstOrderScorer(aggregate="avg").scores(adapter, batches)
    block = next(adapter.blocks())
    assert avg[block.name] == pytest.approx(scores[block.name] / block.numel, rel=1e-4)


def test_first_order_nan_loss_is_a_clear_error():
    adapter = llama(blocks=2)
    next(adapter.matrices()).weight.fill_(float("nan"))
    with pytest.raises(UserError, match="calibration loss is nan"):
        FirstOrderScorer().scores(adapter, batches_for(adapter))
