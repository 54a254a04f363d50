"""verify: a matrix whose zeros miss its plan is named."""

import pytest
import torch

from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.pruning.wanda import WandaPruner
from tests.pruning.test_engine import batches_for, make_llama


def test_verification_catches_a_matrix_that_missed_its_plan():
    adapter = make_llama()
    plan = {blk.name: 0.5 for blk in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan).run(batches_for(adapter))
    first = next(adapter.matrices())
    first.weight.copy_(torch.randn_like(first.weight))  # undo the pruning of one matrix
    with pytest.raises(RuntimeError, match=first.name):
        verify(adapter, plan, None, reports)


def test_a_non_finite_kept_weight_and_a_plan_off_the_global_target_are_named():
    adapter = make_llama()
    plan = {blk.name: 0.5 for blk in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan).run(batches_for(adapter))
    assert verify(adapter, plan, None, reports, overall=0.5)["overall"] == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match=r"not the target's \d+ \(sparsity 0.6\)"):
        verify(adapter, plan, None, reports, overall=0.6)
    last = list(adapter.matrices())[-1]
    kept = (last.weight != 0).nonzero()[0]
    last.weight[tuple(kept)] = float("inf")
    with pytest.raises(RuntimeError, match=rf"{last.name}: NaN/inf weights"):
        verify(adapter, plan, None, reports)
