"""sketches: order statistics of a matrix's scores, each counting the weights it stands for."""

import pytest
import torch

from ecoflap_exp.scoring.sketches import sketch, weight_sketches


def test_a_sketch_keeps_evenly_spaced_order_statistics_and_their_counts():
    scores = torch.tensor([[7.0, 1.0, 10.0, 4.0, 2.0], [9.0, 3.0, 6.0, 8.0, 5.0]])  # 1..10, shuffled
    coarse = sketch(scores, 4)  # positions linspace(0, 9, 4) = 0, 3, 6, 9
    assert coarse.values.tolist() == [1.0, 4.0, 7.0, 10.0] and coarse.counts.tolist() == [1, 3, 3, 3]
    exact = sketch(scores, 100)  # at least as many quantiles as weights: every weight its own
    assert exact.values.tolist() == [float(v) for v in range(1, 11)] and exact.counts.tolist() == [1] * 10


def test_magnitude_sketches_are_of_each_matrixs_absolute_weights(tiny_llama):
    sketches = weight_sketches(tiny_llama, [], "magnitude", 1 << 20)
    matrices = list(tiny_llama.matrices())
    assert list(sketches) == [m.name for m in matrices]
    first = matrices[0]
    assert sketches[first.name].values.tolist() == pytest.approx(first.weight.abs().flatten().sort().values.tolist())
