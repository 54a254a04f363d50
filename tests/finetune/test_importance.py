"""PLATON importance scores: a hand-computed example and the reference pruner over three windows."""

import torch

from ecoflap_exp.finetune.importance import Importance
from tests.finetune.test_trainer import one_matrix


def test_platon_scores_equal_a_hand_computed_example():
    m = one_matrix([[1.0, 2.0]])
    imp = Importance("platon", [m], delta_t=2, beta1=0.5, beta2=0.5)
    for step, grad in enumerate(([2.0, 1.0], [1.0, 1.0], [3.0, 0.0], [0.0, 0.0]), 1):
        m.param.grad = torch.tensor([grad])
        imp.update(step)
    # step 1 (window position 1): I = (0 + [2, 2]) / 2; step 2 (window end): I_bar = 0.5 I = [0.5, 0.5],
    # U = 0.5 |I - I_bar| = [0.25, 0.25], I = [1, 2]; step 3: I = ([1, 2] + [3, 0]) / 2 = [2, 1];
    # step 4: I_bar = 0.5 [0.5, 0.5] + 0.5 [2, 1] = [1.25, 0.75], U = 0.125 + 0.5 |[2, 1] - I_bar| = [0.5, 0.25]
    assert imp.avg["m"].tolist() == [[1.25, 0.75]] and imp.unc["m"].tolist() == [[0.5, 0.25]]
    assert imp.score(m).tolist() == [[0.625, 0.1875]]


def reference_platon(weights, grads, delta_t, beta1, beta2):
    """ID_VL_Pruning's Pruner.update_ipt_with_local_window (PLATON) and the score of
    mask_with_threshold, transcribed for one parameter."""
    ipt = exp_avg_ipt = exp_avg_unc = torch.zeros_like(weights[0])
    for global_step, (p, g) in enumerate(zip(weights, grads, strict=True), 1):
        local_step = global_step % delta_t
        if local_step == 0:
            exp_avg_ipt = beta1 * exp_avg_ipt + (1 - beta1) * ipt
            exp_avg_unc = beta2 * exp_avg_unc + (1 - beta2) * (ipt - exp_avg_ipt).abs()
            ipt = (p * g).abs()
        else:
            ipt = (ipt * local_step + (p * g).abs()) / (local_step + 1)
    return exp_avg_ipt * exp_avg_unc


def test_platon_equals_the_reference_pruner_over_three_windows():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(4, 6, generator=g) for _ in range(33)]
    grads = [torch.randn(4, 6, generator=g) for _ in range(33)]
    m = one_matrix(weights[0].tolist())
    imp = Importance("platon", [m])
    for step, (w, grad) in enumerate(zip(weights, grads, strict=True), 1):
        m.param.data.copy_(w)
        m.param.grad = grad.clone()
        imp.update(step)
    torch.testing.assert_close(imp.score(m), reference_platon(weights, grads, 10, 0.85, 0.95), rtol=1e-6, atol=0)
