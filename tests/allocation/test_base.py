"""What every allocation promises: no group past max_sparsity, the total at the target."""

import pytest

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.allocation.global_ranking import GlobalRanking
from ecoflap_exp.allocation.owl import OwlAllocation
from ecoflap_exp.allocation.waterfill import WaterFilling
from ecoflap_exp.scoring.sketches import weight_sketches
from tests.scoring.test_intrinsic_dim import batches_for, llama


def test_every_allocation_honours_max_sparsity():
    """Scores spread far enough that each allocation, unbounded, would push a group past the
    ceiling: every group ends at or below it and the total stays at the target."""
    adapter = llama(blocks=2)
    batches = batches_for(adapter)
    groups = Groups.of(adapter)
    blocks = [b.name for b in adapter.blocks()]
    matrices = [m.name for m in adapter.matrices()]
    skewed = {blocks[0]: 100.0, blocks[1]: 0.01}

    def total(plan):
        return sum(plan[g] * groups.sizes[g] for g in plan) / sum(groups.sizes[g] for g in plan)

    unbounded = GlobalRanking().plan(skewed, groups, 0.5, 1.0, weight_sketches(adapter, batches, "wanda", 4096))
    assert max(unbounded.values()) > 0.7
    bounded = GlobalRanking().plan(skewed, groups, 0.5, 0.6, weight_sketches(adapter, batches, "wanda", 4096))
    assert set(bounded) == set(matrices) and max(bounded.values()) <= 0.6 + 1e-9
    assert total(bounded) == pytest.approx(0.5, abs=1e-6)
    ratios = {blocks[0]: 0.0, blocks[1]: 1.0}
    # OWL's raw sparsities: 0.5 + 0.08 and 0.5 - 0.08 (equal blocks); held at 0.55, the other moves up
    owl = OwlAllocation(lam=0.08).plan(ratios, groups, 0.5, 0.55)
    assert owl[blocks[0]] == pytest.approx(0.55) and owl[blocks[1]] == pytest.approx(0.45)
    assert OwlAllocation(lam=0.08).plan(ratios, groups, 0.5, 0.6) == pytest.approx({blocks[0]: 0.58, blocks[1]: 0.42})
    water = WaterFilling().plan(skewed, groups, 0.5, 0.6)
    assert max(water.values()) <= 0.6 + 1e-12 and total(water) == pytest.approx(0.5)
