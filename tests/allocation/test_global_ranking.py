"""Global ranking of weights: against a brute-force threshold, and the ID paper's global magnitude."""

import pytest
import torch

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.allocation.global_ranking import GlobalRanking
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.sketches import weight_sketches
from tests.scoring.test_intrinsic_dim import batches_for, llama


def test_global_ranking_matches_a_brute_force_threshold():
    adapter = llama(blocks=2)
    batches = batches_for(adapter)
    scores = {"model.layers.0": 2.0, "model.layers.1": 1.0}
    exact = GlobalRanking(quantiles=1 << 20)
    plan = exact.plan(scores, Groups.of(adapter), 0.5, 1.0, weight_sketches(adapter, batches, "wanda", 1 << 20))
    sketched = GlobalRanking().plan(scores, Groups.of(adapter), 0.5, 1.0,
                                    weight_sketches(adapter, batches, "wanda", 4096))
    norms = {}
    owner = {m.name: b.name for b in adapter.blocks() for m in b.matrices}
    matrices = list(adapter.matrices())
    hooks = [m.input_module.register_forward_hook(
        lambda mod, args, out, m=m: norms.__setitem__(m.name, norms.get(m.name, 0) + args[0].pow(2).sum((0, 1))))
        for m in matrices]
    with torch.no_grad():
        for batch in batches:
            adapter.forward(batch)
    for h in hooks:
        h.remove()
    metrics = {m.name: (m.weight.abs() * norms[m.name].sqrt() * scores[owner[m.name]]).flatten() for m in matrices}
    threshold = torch.cat(list(metrics.values())).sort().values[sum(m.numel for m in matrices) // 2]
    for name, metric in metrics.items():  # exact sketches: exact counts; 4096 order statistics: within 0.2%
        assert round(plan[name] * metric.numel()) == int((metric < threshold).sum()), name
        assert sketched[name] == pytest.approx(float((metric < threshold).float().mean()), abs=2e-3)
    for chosen in (plan, sketched):  # the total is exact either way
        assert sum(round(chosen[m.name] * m.numel) for m in matrices) == sum(m.numel for m in matrices) // 2
    SequentialEngine(adapter, WandaPruner("matrix"), plan).run(batches)  # the plan is prunable as is


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_global_magnitude_times_equal_ids_is_global_magnitude(dtype):
    """The ID paper's rule with equal IDs is plain global magnitude: the weights pruned are the
    round(p N) smallest |w| of the model (bf16 has ties at the threshold: then every pruned |w| is at
    most every kept one); doubling one matrix's ID lowers its sparsity; the count stays exact."""
    from ecoflap_exp.pruning.magnitude import MagnitudePruner

    adapter = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", dtype=dtype,
                              arch_overrides={"num_hidden_layers": 2})
    groups = Groups.of(adapter)
    matrices = list(adapter.matrices())
    total = sum(m.numel for m in matrices)
    ranking = GlobalRanking(base_score="magnitude", quantiles=1 << 20)
    sketches = weight_sketches(adapter, [], "magnitude", 1 << 20)
    equal = {m.name: 7.0 * m.numel for m in matrices}
    plan = ranking.plan(equal, groups, 0.6, 1.0, sketches)
    assert plan == GlobalRanking(base_score="magnitude", use_id=False, quantiles=1 << 20).plan({}, groups, 0.6, 1.0,
                                                                                                  sketches)
    before = {m.name: m.weight.clone() for m in matrices}
    SequentialEngine(adapter, MagnitudePruner("matrix"), plan).run([])
    pruned = torch.cat([before[m.name][m.weight == 0].abs().float() for m in matrices])
    kept = torch.cat([before[m.name][m.weight != 0].abs().float() for m in matrices])
    assert pruned.numel() == round(0.6 * total)
    if dtype == "float32":  # no ties: exactly the globally smallest
        everything = torch.cat([before[m.name].abs().flatten() for m in matrices])
        assert float(pruned.max()) < float(everything.sort().values[round(0.6 * total)])
    assert float(pruned.max()) <= float(kept.min())
    doubled = dict(equal, **{matrices[3].name: 14.0 * matrices[3].numel})
    shifted = ranking.plan(doubled, groups, 0.6, 1.0, sketches)
    assert shifted[matrices[3].name] < plan[matrices[3].name]
    assert all(shifted[m.name] >= plan[m.name] for m in matrices if m is not matrices[3])
    assert sum(round(shifted[m.name] * m.numel) for m in matrices) == round(0.6 * total)
