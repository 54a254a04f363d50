"""What every allocation promises: no group past max_sparsity, the total at the target."""

import pytest

from ecoflap_exp.allocation.base import Groups, settled
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


def test_settled_counts_add_up_to_the_target_by_largest_remainder():
    """Hand-worked: a matrix override (b0.q at 0.13 of 10), a block's matrix (b0.k at 0.2 of 13) and
    another block's (b1.v at 0.5 of 9) give shares 1.3, 2.6 and 4.5, 8.4 in all -> 8 weights: floors
    1, 2, 4 = 7 and the one extra weight to the largest fraction (0.6, b0.k)."""
    groups = Groups(sizes={"b0": 23, "b0.q": 10, "b0.k": 13, "b1": 9, "b1.v": 9},
                    towers=dict.fromkeys(["b0", "b0.q", "b0.k", "b1", "b1.v"], "t"),
                    block_of={"b0.q": "b0", "b0.k": "b0", "b1.v": "b1"})
    plan = {"b0": 0.2, "b0.q": 0.13, "b1": 0.5}
    sparsity = 8.4 / 32
    counts = {m: round(p * groups.sizes[m]) for m, p in settled(plan, groups, sparsity).items()}
    assert counts == {"b0.q": 1, "b0.k": 3, "b1.v": 4}
    assert sum(counts.values()) == round(sparsity * 32)


def test_settled_leaves_integer_shares_alone_and_breaks_ties_in_pruning_order():
    """Shares 2.5, 2.5 and 3.0 at a target of 8/16: one extra weight, to the first of the tied halves."""
    groups = Groups(sizes={"a": 5, "b": 5, "c": 6}, towers=dict.fromkeys("abc", "t"),
                    block_of={"a": "x", "b": "x", "c": "y"})
    counts = {m: round(p * groups.sizes[m]) for m, p in settled({"x": 0.5, "y": 0.5}, groups, 0.5).items()}
    assert counts == {"a": 3, "b": 2, "c": 3}


def test_settled_refuses_a_plan_that_cannot_reach_the_target():
    groups = Groups(sizes={"a": 10}, towers={"a": "t"}, block_of={"a": "x"})
    with pytest.raises(RuntimeError, match="cannot reach sparsity 0.9"):
        settled({"x": 0.5}, groups, 0.9)
