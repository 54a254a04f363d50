"""Global pruning to an exact count, and fixed masks that hold their zeros through the optimiser."""

import torch

from ecoflap_exp.finetune.importance import Importance
from ecoflap_exp.finetune.masking import FixedMasks, global_prune
from ecoflap_exp.models.seam import PrunableMatrix
from tests.finetune.test_trainer import one_matrix


def test_global_prune_hits_the_exact_count_through_ties_keeps_the_guard_and_follows_ids():
    a, b = one_matrix([[1.0] * 10] * 10), one_matrix([[1.0] * 10] * 10)
    b.name = "b"
    scores = {"m": torch.ones(10, 10), "b": torch.ones(10, 10)}  # all tied: the count decides
    counts = global_prune([a, b], scores, 0.37, min_pruned=0)
    assert sum(counts.values()) == 74 and int((a.weight == 0).sum() + (b.weight == 0).sum()) == 74
    a.param.data.fill_(1.0)
    b.param.data.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    scores = {"m": torch.rand(10, 10, generator=g) + 0.5, "b": torch.rand(10, 10, generator=g) + 10}  # b far above
    counts = global_prune([a, b], scores, 0.3, min_pruned=2)
    assert counts == {"m": 58, "b": 2}  # the guard takes b's 2 lowest inside the 60
    a.param.data.fill_(1.0)
    b.param.data.fill_(1.0)
    counts = global_prune([a, b], scores, 0.3, ids={"m": 1000.0, "b": 1.0}, min_pruned=0)
    assert counts == {"m": 0, "b": 60}  # a's large ID lifts its scores above b's


def test_fixed_masks_hold_zeros_through_sgd_momentum_and_weight_decay():
    m = one_matrix(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).tolist())
    m.param.data[m.param.data.abs() < 0.7] = 0
    zeros = m.weight == 0
    masks = FixedMasks([m])
    opt = torch.optim.SGD([m.param], lr=0.1, momentum=0.9, weight_decay=0.1)
    masks.attach(opt)
    for _ in range(5):
        m.param.grad = torch.randn(8, 8)
        opt.step()
    assert bool((m.weight[zeros] == 0).all()) and bool((m.weight[~zeros] != 0).all())
    assert bool((opt.state[m.param]["momentum_buffer"][zeros] == 0).all())  # no momentum builds up


def test_checkpointed_masks_and_scores_load_onto_the_weights_device():
    # accelerate loads custom checkpoint objects onto the CPU; on a GPU the weights live elsewhere
    linear = torch.nn.Linear(4, 3, bias=False, device="meta")
    m = PrunableMatrix("m", linear.weight, linear)
    masks = FixedMasks.__new__(FixedMasks)
    masks.matrices = [m]
    masks.load_state_dict({"keep": {"m": torch.ones(3, 4, dtype=torch.bool)}})
    imp = Importance("platon", [m])
    imp.load_state_dict({key: {"m": torch.zeros(3, 4)} for key in ("ipt", "avg", "unc")})
    assert masks.keep["m"].device.type == "meta" and imp.avg["m"].device.type == "meta"


def reference_mask_with_threshold(scores: dict[str, torch.Tensor], ids: dict[str, float],
                                  threshold: float) -> dict[str, torch.Tensor]:
    """ID_VL_Pruning's Pruner.mask_with_threshold (useID), transcribed: True = zeroed."""
    is_dict = {n: s * ids[n] for n, s in scores.items()}
    all_is = torch.cat([is_dict[n].view(-1) for n in is_dict])
    mask_threshold = torch.kthvalue(all_is, int(all_is.shape[0] * (1 - threshold)))[0].item()
    masks = {}
    for n, s in is_dict.items():
        k_v, _ = torch.topk(s.view(-1), 3, largest=False)
        masks[n] = s < max(max(k_v), mask_threshold)
    return masks


def test_global_prune_is_the_reference_mask_plus_the_weights_its_int_and_strict_comparison_keep():
    g = torch.Generator().manual_seed(3)
    matrices = [one_matrix(torch.randn(16, 24, generator=g).tolist()) for _ in range(3)]
    for i, m in enumerate(matrices):
        m.name = f"m{i}"
    scores = {m.name: torch.rand(16, 24, generator=g) for m in matrices}
    ids = {"m0": 20.0, "m1": 5.0, "m2": 60.0}
    reference = reference_mask_with_threshold(scores, ids, threshold=0.35)  # remaining ratio 0.35
    counts = global_prune(matrices, scores, 0.65, ids=ids, min_pruned=2)
    ours = {m.name: m.weight == 0 for m in matrices}
    assert sum(counts.values()) == round(3 * 16 * 24 * 0.65)
    assert all(bool((ours[n] | ~reference[n]).all()) for n in ours)  # every weight the reference zeroes
    # the reference zeroes the int(n (1 - r)) - 1 = 747 entries below the 748th value, we round(748.8) = 749
    assert sum(int(reference[n].sum()) for n in ours) == int(1152 * 0.65) - 1 == 747
