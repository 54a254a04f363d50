"""OWL's outlier ratio of a block against a direct count over the hooked inputs."""

import pytest
import torch

from ecoflap_exp.scoring.owl import OutlierRatioScorer
from tests.scoring.test_intrinsic_dim import batches_for, llama


def test_outlier_ratio_of_a_block_by_hand():
    adapter = llama(blocks=2)
    batches = batches_for(adapter)
    ratios = OutlierRatioScorer(outlier_factor=3.0).scores(adapter, batches)
    first = next(adapter.blocks())
    norms = {}
    hooks = [m.input_module.register_forward_hook(
        lambda mod, args, out, m=m: norms.__setitem__(m.name, norms.get(m.name, 0) + args[0].pow(2).sum((0, 1))))
        for m in first.matrices]
    with torch.no_grad():
        for batch in batches:
            adapter.forward(batch)
    for h in hooks:
        h.remove()
    outliers = 0
    for m in first.matrices:
        metric = m.weight.abs() * norms[m.name].sqrt()
        outliers += int((metric > 3.0 * metric.mean()).sum())
    assert ratios[first.name] == pytest.approx(outliers / first.numel)
