"""input_stats: Wanda's column norms as locuslab/wanda accumulates them, and |W| ||X||."""

import pytest
import torch

from ecoflap_exp.input_stats import ColumnNorms, wanda_metric


class WrappedGPT:
    """locuslab/wanda lib/layerwrapper.py WrappedGPT, its statistics as released."""

    def __init__(self, columns):
        self.scaler_row = torch.zeros(columns)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wanda_column_norms_are_bit_identical_to_locuslab_wanda(dtype):
    """LLaMA-like activations (a few large outlier columns) in batches of 4 x 128 tokens, in the model's
    dtype: the running mean of squared norms equals WrappedGPT's exactly, where a sum of squares
    (`x.pow(2).sum(0)`) differs in the last bits."""
    g = torch.Generator().manual_seed(0)
    reference, ours = WrappedGPT(512), ColumnNorms(512, torch.device("cpu"))
    summed = torch.zeros(512)
    seen = 0
    for _ in range(4):
        x = (torch.randn(4, 128, 512, generator=g) * torch.logspace(-2, 2, 512)).to(dtype)
        reference.add_batch(x)
        ours.add(x.reshape(-1, 512), 4)
        summed = summed * (seen / (seen + 4)) + x.float().reshape(-1, 512).pow(2).sum(0) / (seen + 4)
        seen += 4
    assert torch.equal(ours.sq_norms, reference.scaler_row)
    assert not torch.equal(summed, reference.scaler_row)  # the rounding this test is about


def test_the_running_mean_is_over_samples_and_the_metric_is_w_times_the_norm():
    """Two batches of one and three samples: the mean of squared column norms over the four samples,
    worked by hand, whatever the batching."""
    stats = ColumnNorms(2, torch.device("cpu"))
    stats.add(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 1)  # squared norms (10, 4)
    stats.add(torch.tensor([[2.0, 2.0]]), 3)  # (4, 4)
    assert stats.samples == 4
    assert stats.sq_norms.tolist() == pytest.approx([(10 + 4) / 4, (4 + 4) / 4])
    metric = wanda_metric(torch.tensor([[-2.0, 1.0]]), stats)
    assert metric[0].tolist() == pytest.approx([2 * 3.5**0.5, 2**0.5])
