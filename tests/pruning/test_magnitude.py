"""magnitude: the smallest |w| pruned, per row or over the whole matrix, on a matrix worked by hand."""

import torch

from ecoflap_exp.pruning.magnitude import MagnitudePruner
from ecoflap_exp.pruning.masks import parse_nm

W = [[0.5, -0.1, 2.0, -0.3],
     [-4.0, 3.0, 0.2, 1.0]]


def pruned(pruner, sparsity, group=None, nm=None):
    weight = torch.tensor(W)
    mask = pruner.prune(weight, None, sparsity, nm, group)
    assert torch.equal(weight == 0, mask)
    return mask.int().tolist()


def test_each_row_loses_its_smallest_magnitudes():
    # row 0: |-0.1| < |-0.3| < 0.5 < 2.0; row 1: 0.2 < 1.0 < 3.0 < |-4.0|
    assert pruned(MagnitudePruner("row"), 0.5) == [[0, 1, 0, 1], [0, 0, 1, 1]]
    assert pruned(MagnitudePruner("row"), 0.25) == [[0, 1, 0, 0], [0, 0, 1, 0]]


def test_the_whole_matrix_group_ranks_all_weights_together():
    # the 3 smallest of all 8: -0.1, 0.2, -0.3 (row 0 loses two, row 1 one)
    assert pruned(MagnitudePruner(), 3 / 8) == [[0, 1, 0, 1], [0, 0, 1, 0]]
    # half of all 8: -0.1, 0.2, -0.3, 0.5 (row 0 loses three); per row (the call's group wins) two each
    assert pruned(MagnitudePruner(), 0.5) == [[1, 1, 0, 1], [0, 0, 1, 0]]
    assert pruned(MagnitudePruner("matrix"), 0.5, group="row") == [[0, 1, 0, 1], [0, 0, 1, 1]]
    # 2:4 keeps the two largest of each group of four
    assert pruned(MagnitudePruner(), 0.5, nm=parse_nm("2:4")) == [[0, 1, 0, 1], [0, 0, 1, 1]]


def test_magnitude_needs_no_calibration_inputs():
    assert MagnitudePruner.needs_inputs is False and MagnitudePruner(group=None).group == "matrix"
