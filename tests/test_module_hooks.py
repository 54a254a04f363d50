"""Scoped hooks on modules (ecoflap_exp.module_hooks): a replaced forward is undone in order, and a
block's matrices are observed with their own input and their module's output."""

import torch
from torch import nn

from ecoflap_exp.models.seam import PrunableMatrix
from ecoflap_exp.module_hooks import is_replaced, observing_matrices, replacing_forward


def test_a_replaced_forward_runs_within_and_the_enclosing_one_comes_back():
    linear = nn.Linear(3, 2)
    x = torch.ones(1, 3)
    dense = linear(x)
    with replacing_forward({linear: lambda inp: inp.sum(-1)}):
        assert is_replaced(linear) and torch.equal(linear(x), torch.tensor([3.0]))
        with replacing_forward({linear: lambda inp: inp * 0}):
            assert torch.equal(linear(x), torch.zeros(1, 3))
        assert torch.equal(linear(x), torch.tensor([3.0]))
    assert not is_replaced(linear) and torch.equal(linear(x), dense)


def test_observed_matrices_get_their_input_and_their_modules_output_in_order():
    first, second = nn.Linear(4, 6), nn.Linear(6, 2)
    model = nn.Sequential(first, second)
    halves = [PrunableMatrix(f"first.{i}", first.weight, first, slice(3 * i, 3 * i + 3)) for i in range(2)]
    matrices = [*halves, PrunableMatrix("second", second.weight, second)]
    seen = []
    x = torch.randn(5, 4)
    with observing_matrices(matrices, lambda m, inp, out: seen.append((m.name, inp, out))):
        y = model(x)
    assert [name for name, _, _ in seen] == ["first.0", "first.1", "second"]
    assert seen[0][1] is x and seen[1][1] is x and torch.equal(seen[2][1], first(x))
    assert torch.equal(seen[2][2], y)
    model(x)
    assert len(seen) == 3  # the hooks are gone after the scope
