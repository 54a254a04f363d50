"""AlphaPruning's allocation: against a transcription of the reference's ww_sparsity, worked by hand,
the size-weighted mean at the target, the ceiling held."""

import numpy as np
import pytest
import torch

from ecoflap_exp.allocation.alpha import AlphaAllocation
from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from tests.scoring.test_combined import TwoTowers

SIZES = {"v0": 64, "v1": 64, "t0": 128, "t1": 128}


def reference_ww_sparsity(metrics, prunables, layer_num_in_block, sparsity_ratio, epsilon, mapping_type="block_wise"):
    """haiquanlu/AlphaPruning @ 5f0e9845549ec8ee6dc395f1410566f26cc9e54e, lib/prune.py:164-187
    (ww_sparsity after the metrics are loaded; s1, s2 = 1 -+ epsilon as prune_wanda_ww sets them,
    lib/prune.py:416-417), transcribed: one ratio per matrix."""
    s1 = 1.0 - epsilon
    s2 = 1.0 + epsilon
    if mapping_type == "block_wise":
        block_metrics = [np.mean(metrics[i:i + layer_num_in_block]) for i in range(0, len(metrics), layer_num_in_block)]
        metrics = [i for i in block_metrics for j in range(layer_num_in_block)]
    scores = torch.tensor(metrics)
    prunables = torch.tensor(prunables)
    max = torch.max(scores)  # noqa: A001 (the reference's names)
    min = torch.min(scores)  # noqa: A001
    layerwise_pruning_ratios = (((scores - min) / (max - min)) * (s2 - s1) + s1)
    scaler = torch.sum(prunables) * sparsity_ratio / (torch.sum(prunables * layerwise_pruning_ratios))
    layerwise_pruning_ratios = layerwise_pruning_ratios * scaler
    return layerwise_pruning_ratios.cpu().numpy().tolist()


def weighted_mean(plan, sizes):
    return sum(plan[g] * n for g, n in sizes.items()) / sum(sizes.values())


def test_alpha_allocation_by_hand():
    groups = Groups.of(TwoTowers())
    alphas = {"v0": 2.0, "v1": 3.0, "t0": 4.0, "t1": 4.0}
    # factors 0.5, 1.0, 1.5, 1.5; sum n f = 32 + 64 + 192 + 192 = 480; c = 0.5 x 384 / 480 = 0.4
    plan = AlphaAllocation(epsilon=0.5).plan(alphas, groups, 0.5, 1.0)
    assert plan == pytest.approx({"v0": 0.2, "v1": 0.4, "t0": 0.6, "t1": 0.6}, abs=1e-15)
    # a ceiling of 0.55: t0, t1 held there (140.8 weights), v0, v1 share 51.2 = 64 c (0.5 + 1.0), c = 8 / 15
    held = AlphaAllocation(epsilon=0.5).plan(alphas, groups, 0.5, 0.55)
    assert held == pytest.approx({"v0": 4 / 15, "v1": 8 / 15, "t0": 0.55, "t1": 0.55}, abs=1e-12)
    assert weighted_mean(held, SIZES) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("mapping_type", ["block_wise", "layer_wise"])
@pytest.mark.parametrize(("sparsity", "epsilon"), [(0.5, 0.3), (0.7, 0.2), (0.6, 0.05)])
def test_alpha_allocation_equals_the_reference_mapping(mapping_type, sparsity, epsilon):
    """Blocks of a LLaMA's 7 matrices (q, k, v, o 1x, gate, up, down 2.6x), random alphas."""
    rng = np.random.default_rng(round(sparsity * 100 + epsilon * 10))
    blocks, per_block = 6, [64, 16, 16, 64, 172, 172, 172]
    metrics = list(rng.uniform(2.0, 6.0, blocks * 7))
    prunables = per_block * blocks
    expected = reference_ww_sparsity(metrics, prunables, 7, sparsity, epsilon, mapping_type)
    matrices = [f"b{i}.m{j}" for i in range(blocks) for j in range(7)]
    sizes = dict(zip(matrices, prunables, strict=True))
    if mapping_type == "block_wise":  # scorer=alpha, granularity=block: the mean of the block's alphas
        names = [f"b{i}" for i in range(blocks)]
        scores = {b: float(np.mean(metrics[7 * i : 7 * i + 7])) for i, b in enumerate(names)}
        sizes |= {b: sum(prunables[7 * i : 7 * i + 7]) for i, b in enumerate(names)}
        expected = expected[::7]
    else:
        names, scores = matrices, dict(zip(matrices, metrics, strict=True))
    groups = Groups(sizes, dict.fromkeys(sizes, "t"), {m: m.split(".")[0] for m in matrices})
    plan = AlphaAllocation(epsilon=epsilon).plan(scores, groups, sparsity, 1.0)
    assert list(plan) == names
    # the reference's sum(n) x sparsity is float32 (an int64 tensor times a float): its ratios are off by
    # up to 6e-8 of themselves, and its mean misses the target by as much; ours are exact
    assert list(plan.values()) == pytest.approx(expected, rel=1e-7)
    assert weighted_mean(plan, {g: sizes[g] for g in names}) == pytest.approx(sparsity, abs=1e-12)
    order = sorted(names, key=scores.get)
    assert [plan[g] for g in order] == sorted(plan.values())  # higher alpha, higher sparsity


def test_equal_alphas_give_the_uniform_plan_and_a_full_block_is_refused():
    groups = Groups.of(TwoTowers())
    assert AlphaAllocation().plan(dict.fromkeys(SIZES, 3.0), groups, 0.5, 0.6) == dict.fromkeys(SIZES, 0.5)
    with pytest.raises(UserError, match="lower allocation.epsilon"):
        # factors 0.1, 0.1, 0.1, 1.9: c = 0.8 x 384 / 268.8 would give t1 2.17; held at 1.0, the others 0.7
        AlphaAllocation(epsilon=0.9).plan({"v0": 1.0, "v1": 1.0, "t0": 1.0, "t1": 2.0}, groups, 0.8, 1.0)
    with pytest.raises(UserError, match="allocation.epsilon"):
        AlphaAllocation(epsilon=1.0)
