"""verify: a matrix whose zeros miss its plan, or that holds NaN/inf, is named; the parameters outside
the matrices are read after fine-tuning (whose training steps write them) and not after a one-shot
prune (whose pruners write only the matrices)."""

import contextlib
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from ecoflap_exp.errors import UserError
from ecoflap_exp.finetune.trainer import Outcome
from ecoflap_exp.oneshot import Calibration, Target, prune_with
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.verify import finite, verify
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.tuning import fine_tune
from tests.pruning.test_engine import batches_for, make_llama
from tests.test_oneshot import method

NON_FINITE = [float("nan"), float("inf"), -float("inf")]


def wanda_pruned():
    adapter = make_llama()
    plan = {blk.name: 0.5 for blk in adapter.blocks()}
    return adapter, plan, SequentialEngine(adapter, WandaPruner(), plan).run(batches_for(adapter))


def test_verification_catches_a_matrix_that_missed_its_plan():
    adapter, plan, reports = wanda_pruned()
    first = next(adapter.matrices())
    first.weight.copy_(torch.randn_like(first.weight))  # undo the pruning of one matrix
    with pytest.raises(RuntimeError, match=first.name):
        verify(adapter, plan, None, reports)


@pytest.mark.parametrize(("change", "zeros"), [(0.0, 2049), (1.0, 2047)])
def test_one_zero_too_many_or_too_few_is_named_with_its_count(change, zeros):
    adapter, plan, reports = wanda_pruned()
    first = next(adapter.matrices())  # q_proj, 64 x 64 at 0.5: 2048 pruned, no zero before
    assert (first.shape, reports[0].pruned, reports[0].zeros_before) == ((64, 64), 2048, 0)
    # zero one kept weight (one zero more than the pruned plus those before) or regrow a pruned one
    where = (first.weight != 0) if change == 0.0 else (first.weight == 0)
    first.weight[tuple(where.nonzero()[0])] = change
    with pytest.raises(RuntimeError, match=rf"{first.name}: {zeros} zeros, planned 2048"):
        verify(adapter, plan, None, reports, others=False)


def test_the_masks_hash_is_of_each_matrix_name_and_packed_zero_pattern_in_pruning_order():
    adapter, plan, reports = wanda_pruned()
    expected = hashlib.sha1()
    for m in adapter.matrices():
        expected.update(m.name.encode())
        expected.update(np.packbits((m.weight == 0).flatten().numpy()).tobytes())
    assert verify(adapter, plan, None, reports, others=False)["masks_sha1"] == expected.hexdigest()


def test_a_non_finite_kept_weight_and_a_plan_off_the_global_target_are_named():
    adapter, plan, reports = wanda_pruned()
    assert verify(adapter, plan, None, reports, overall=0.5)["overall"] == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match=r"not the target's \d+ \(sparsity 0.6\)"):
        verify(adapter, plan, None, reports, overall=0.6)
    last = list(adapter.matrices())[-1]
    kept = (last.weight != 0).nonzero()[0]
    last.weight[tuple(kept)] = float("inf")
    with pytest.raises(RuntimeError, match=rf"{last.name}: NaN/inf weights"):
        verify(adapter, plan, None, reports)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("at", ["first", "last"])
def test_a_non_finite_pruned_matrix_weight_is_named_without_reading_the_others(value, at):
    adapter, plan, reports = wanda_pruned()
    matrix = list(adapter.matrices())[0 if at == "first" else -1]
    matrix.weight.view(-1)[0 if at == "first" else -1] = value
    with pytest.raises(RuntimeError, match=rf"{matrix.name}: NaN/inf weights"):
        verify(adapter, plan, None, reports, others=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_agrees_with_isfinite_wherever_the_bad_value_sits(dtype):
    # 4099 values: the vectorised reduction's lanes and its scalar tail both get a bad value
    base = torch.randn(4099, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert finite(base) and finite(base[:0])
    for position in [*range(17), 2049, 4082, 4098]:
        for value in NON_FINITE:
            bad = base.clone()
            bad[position] = value
            assert not finite(bad) and not finite(bad.view(1, -1).t())  # a view as well
    biggest = torch.full((4099,), torch.finfo(dtype).max, dtype=dtype)
    assert finite(biggest)  # finite values whose sum would overflow are still finite


class Reads(TorchFunctionMode):
    """The storages of every tensor a torch function or tensor method is handed while active."""

    def __init__(self):
        super().__init__()
        self.storages: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for arg in [*args, *kwargs.values()]:
            for t in arg if isinstance(arg, list | tuple) else (arg,):
                if isinstance(t, torch.Tensor):
                    self.storages.add(t.untyped_storage().data_ptr())
        return func(*args, **kwargs)


def storage(tensor):
    return tensor.untyped_storage().data_ptr()


def test_after_a_one_shot_prune_verify_reads_the_matrices_and_not_embeddings_norms_or_head():
    adapter = make_llama()
    reads = Reads()
    pruned = prune_with(adapter, Calibration(batches_for(adapter)), method("uniform"), Target(0.5, 0.6),
                        stage=lambda name: reads if name == "verify" else contextlib.nullcontext())
    assert pruned.achieved["overall"] == pytest.approx(0.5)
    matrices = {storage(m.param) for m in adapter.matrices()}
    outside = {name: storage(p) for name, p in adapter.model.named_parameters() if storage(p) not in matrices}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(outside)
    assert matrices <= reads.storages
    assert not set(outside.values()) & reads.storages
    with Reads() as everything:  # the spy sees them when verify is asked to read them
        verify(adapter, pruned.pruned_plan, None, pruned.reports, others=True)
    assert set(outside.values()) <= everything.storages


class OneStep:
    """A fine-tuning stand-in whose one "training step" writes `value` into the final norm (what a
    diverged AdamW step does to a parameter outside the pruned matrices)."""

    train = SimpleNamespace(samples=list, augment="none", describe=lambda: "stand-in")

    def __init__(self, value: float):
        self.value = value

    def run(self, adapter, samples, augment, folder, target, ids, trained_on):
        adapter.model.model.norm.weight.data[3] = self.value
        return Outcome({})


@pytest.mark.parametrize("value", [1.5, *NON_FINITE])
def test_a_non_finite_parameter_outside_the_matrices_is_named_after_fine_tuning(tmp_path, value):
    adapter = make_llama()
    target = Target(0.5, 0.6)
    pruned = prune_with(adapter, Calibration(batches_for(adapter)), method("uniform"), target)
    tune = lambda: fine_tune(OneStep(value), None, adapter, pruned, target, tmp_path, {}, True,  # noqa: E731
                             lambda _: contextlib.nullcontext())
    if np.isfinite(value):
        assert tune().achieved["overall"] == pytest.approx(0.5)
    else:
        with pytest.raises(UserError, match=r"NaN/inf parameters outside the pruned matrices \(model.norm.weight\)"):
            tune()
