"""OWL's allocation: sparsities from outlier ratios, worked by hand."""

import pytest

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.allocation.owl import OwlAllocation
from tests.scoring.test_combined import TwoTowers


def test_owl_allocation_by_hand():
    adapter = TwoTowers()
    sizes = {"v0": 64, "v1": 64, "t0": 128, "t1": 128}
    ratios = {"v0": 0.0, "v1": 1.0, "t0": 0.5, "t1": 0.5}
    plan = OwlAllocation(lam=0.1).plan(ratios, Groups.of(adapter), 0.5, 0.6)
    # scaled: 0, 0.2, 0.1, 0.1; size-weighted mean 0.1 -> sparsity 0.5 - (scaled - 0.1)
    assert plan == pytest.approx({"v0": 0.6, "v1": 0.4, "t0": 0.5, "t1": 0.5})
    assert sum(plan[g] * n for g, n in sizes.items()) / sum(sizes.values()) == pytest.approx(0.5)
