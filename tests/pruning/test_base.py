"""pruning.base: the local-pruner contract's defaults, and its options checked under `pruner.`."""

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.pruning.base import LocalPruner


class Zeroes(LocalPruner):
    """Prunes the first `sparsity` share of the columns (a stand-in with the contract's defaults)."""

    def prune(self, weight, stats, sparsity, nm, group):
        mask = torch.zeros_like(weight, dtype=torch.bool)
        mask[:, : round(weight.shape[1] * sparsity)] = True
        weight[mask] = 0
        return mask


def test_the_contracts_defaults_and_its_checked_options():
    pruner = Zeroes()
    assert pruner.count == "exact" and pruner.needs_inputs and pruner.group_for(None) is None
    weight = torch.ones(2, 4)
    assert pruner.prepare(weight, None) is None and torch.equal(weight, torch.ones(2, 4))  # prepare changes nothing
    with pytest.raises(NotImplementedError, match="Zeroes needs no input statistics"):
        pruner.new_stats(4, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^pruner.count='approx' is unknown; use one of exact, reference$"):
        Zeroes(count="approx")
