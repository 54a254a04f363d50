"""The score -> sparsity water-filling, on its own."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.allocation.waterfill import WaterFilling, allocate
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import Block, PrunableMatrix, Tower
from ecoflap_exp.scoring.combined import ProductScorer
from tests.scoring.test_combined import FixedScores, TwoTowers


def weighted_mean(plan, sizes):
    return sum(plan[g] * sizes[g] for g in sizes) / sum(sizes.values())


def test_hand_worked_example():
    # n = 100 each, p = 0.5, p_max = 0.6: floor keeps 40 each, 20 more to keep, split 3:1
    plan = allocate({"a": 3.0, "b": 1.0}, {"a": 100, "b": 100}, 0.5, 0.6)
    assert plan == pytest.approx({"a": 0.45, "b": 0.55})


def test_saturated_block_overflows_to_the_others():
    # p = 0.3, p_max = 0.6: floors keep 40 each, 90 more to keep; a's share (81) exceeds its
    # room (60), so a keeps all 100 and the other 30 split evenly: b and c keep 55 each
    plan = allocate({"a": 9.0, "b": 0.5, "c": 0.5}, {"a": 100, "b": 100, "c": 100}, 0.3, 0.6)
    assert plan["a"] == 0.0
    assert plan["b"] == pytest.approx(0.45) and plan["c"] == pytest.approx(0.45)


def test_uniform_scores_give_the_exact_target():
    sizes = {"a": 1000, "b": 3000, "c": 70}
    plan = allocate({g: float(n) for g, n in sizes.items()}, sizes, 0.5, 0.6)
    assert plan == {"a": 0.5, "b": 0.5, "c": 0.5}


@pytest.mark.parametrize("seed", range(20))
def test_properties_on_random_inputs(seed):
    rng = random.Random(seed)
    sizes = {f"b{i}": rng.randint(10, 10_000) for i in range(rng.randint(2, 30))}
    scores = {g: rng.random() * rng.choice([1, 100]) for g in sizes}
    p = rng.uniform(0.05, 0.85)
    p_max = min(1.0, p + rng.uniform(0, 0.3))
    plan = allocate(scores, sizes, p, p_max)
    assert all(0 <= s <= p_max + 1e-12 for s in plan.values())
    # exact total: kept weights differ from (1 - p) N by less than one parameter per block
    kept = sum((1 - plan[g]) * n for g, n in sizes.items())
    assert abs(kept - (1 - p) * sum(sizes.values())) < len(sizes)
    # monotone: raising one block's score never raises its sparsity, nor lowers anyone else's
    g = rng.choice(list(sizes))
    higher = allocate({**scores, g: scores[g] * 2 + 0.1}, sizes, p, p_max)
    assert higher[g] <= plan[g] + 1e-12
    assert all(higher[h] >= plan[h] - 1e-12 for h in sizes if h != g)


def test_equal_sizes_order_follows_scores():
    sizes = {g: 500 for g in "abcde"}
    scores = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 2.0, "e": 4.0}
    plan = allocate(scores, sizes, 0.5, 0.7)
    assert sorted(sizes, key=plan.get) == sorted(sizes, key=scores.get, reverse=True)


def test_zero_scores_fall_back_to_uniform():
    sizes = {"a": 100, "b": 300}
    plan = allocate({"a": 0.0, "b": 0.0}, sizes, 0.5, 0.6)
    assert weighted_mean(plan, sizes) == pytest.approx(0.5)
    assert plan["a"] == pytest.approx(plan["b"])


@pytest.mark.parametrize(("p", "p_max"), [(1.0, 1.0), (-0.1, 0.5), (0.5, 0.4), (0.5, 1.2)])
def test_bad_targets(p, p_max):
    with pytest.raises(UserError):
        allocate({"a": 1.0}, {"a": 10}, p, p_max)


def test_negative_or_nan_scores_rejected():
    with pytest.raises(UserError, match="non-negative"):
        allocate({"a": -1.0, "b": 1.0}, {"a": 10, "b": 10}, 0.5, 0.6)
    with pytest.raises(UserError, match="non-negative"):
        allocate({"a": float("nan"), "b": 1.0}, {"a": 10, "b": 10}, 0.5, 0.6)


class Blip2Shapes(TwoTowers):
    """BLIP-2 (ViT-g + Flan-T5-XL) block sizes, one meta-device matrix per block: 39 ViT blocks of
    25,231,360 weights, 24 encoder blocks of 48,234,496 and 24 decoder blocks of 65,011,712."""

    TOWERS = (("vision", 39, (1408, 17920)), ("encoder", 24, (2048, 23552)), ("decoder", 24, (2048, 31744)))

    def __init__(self):
        self.model = nn.ParameterDict({f"{t}{i}": nn.Parameter(torch.empty(shape, device="meta"))
                                       for t, count, shape in self.TOWERS for i in range(count)})

    def all_towers(self):
        return [Tower(t, [Block(f"{t}{i}", nn.Identity(), [PrunableMatrix(f"{t}{i}.w", self.model[f"{t}{i}"],
                                                                             nn.Identity())]) for i in range(count)])
                for t, count, _ in self.TOWERS]


@pytest.mark.parametrize(("sparsity", "max_sparsity"), [(0.5, 0.6), (0.5, 0.99), (0.7, 0.8)])
def test_equal_ids_give_every_blip2_block_the_target(sparsity, max_sparsity):
    """An ID is a density (ID x size is the score), so equal IDs keep the uniform plan, alone or
    times zeroth-order scores (then zeroth's own plan); raw IDs as scores would let size drive it."""
    adapter = Blip2Shapes()
    groups = Groups.of(adapter)
    blocks = [b.name for b in adapter.blocks()]
    assert [groups.sizes[b] for b in ("vision0", "encoder0", "decoder0")] == [25_231_360, 48_234_496, 65_011_712]
    ids = FixedScores({b: 40.0 * groups.sizes[b] for b in blocks})
    plan = WaterFilling().plan(ids.scores(adapter, []), groups, sparsity, max_sparsity)
    assert plan == pytest.approx(dict.fromkeys(blocks, sparsity), abs=1e-12)
    size_driven = WaterFilling().plan(dict.fromkeys(blocks, 40.0), groups, sparsity, max_sparsity)
    assert size_driven["vision0"] < sparsity - 0.02 < sparsity + 0.02 < size_driven["decoder0"]
    rng = np.random.default_rng(0)
    zeroth = FixedScores({b: float(rng.uniform(0.5, 2.0)) * groups.sizes[b] for b in blocks})
    with_ids = ProductScorer([zeroth, ids]).scores(adapter, [])
    assert WaterFilling().plan(with_ids, groups, sparsity, max_sparsity) == pytest.approx(
        WaterFilling().plan(zeroth.scores(adapter, []), groups, sparsity, max_sparsity), abs=1e-12)


def test_per_tower_scope_holds_each_tower_at_the_target():
    adapter = TwoTowers()
    scores = {"v0": 1.0, "v1": 3.0, "t0": 1.0, "t1": 1.0}
    plan = WaterFilling("per_tower").plan(scores, Groups.of(adapter), 0.5, 0.6)
    assert (plan["v0"] + plan["v1"]) / 2 == pytest.approx(0.5)
    assert plan["v0"] > plan["v1"] and plan["t0"] == pytest.approx(0.5)
    joint = WaterFilling("joint").plan({"v0": 100.0, "v1": 100.0, "t0": 1.0, "t1": 1.0}, Groups.of(adapter), 0.5, 0.6)
    assert joint["v0"] < 0.5 < joint["t0"]
