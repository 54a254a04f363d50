"""AlphaPruning's layer quality (Lu et al., NeurIPS 2024; haiquanlu/AlphaPruning): the exponent alpha
of a power law fitted to the tail of each matrix's empirical spectral density (the eigenvalues of
W^T W), from the weights alone. Heavy-Tailed Self-Regularisation reads a small alpha as a
well-trained matrix, so AlphaAllocation (allocation/alpha.py) prunes blocks of higher alpha more.
The block scores are alphas, not importances: pair this scorer with allocation=alpha (its config
does).

The fit is the reference's (lib/esd_utils.py net_esd_estimator): the continuous power-law maximum
likelihood estimate above a chosen xmin, alpha = 1 + n / sum_{x >= xmin} log(x / xmin), where xmin
is chosen by `metric`:

- `alpha_peak` (the reference's default, main.py --ww_metric): every eigenvalue up to 1.5 x the
  peak of the spectrum's log10 histogram (100 bins) is tried as xmin, and the fit of least
  Kolmogorov-Smirnov distance is kept.
- `alpha_mid`: xmin is the median eigenvalue (the one at index int(N / 2) in ascending order).

The reference's other metrics (entropy, WeightWatcher's own alpha, mp_softrank, stable_rank,
random_distance, log_norm, log_spectral_norm, alpha_weighted, log_alpha_norm, spectral_norm) come from
the weightwatcher package's analyze(mp_fit=True, randomize=True) and are not provided.

Where we differ from the reference: the eigenvalues come from each prunable matrix (a fused qkv
matrix split into q, k and v rows is three matrices; the reference fits whole nn.Linear weights),
on the matrix's own device (the reference copies it to the CPU); the fit runs in float64 over
the candidates in chunks (the reference: float32, one xmin at a time), so alphas agree with it to a
few 1e-6. A spectrum without a tail to fit (fewer than two eigenvalues, a zero one, all equal) is a
UserError naming the matrix (the reference crashes or returns NaN or infinity). The peak's window:
the reference's lower bound is log10(0.95 x peak) (esd_utils.py, from WeightWatcher), a log10
compared with eigenvalues, so it admits (nearly) every eigenvalue below the peak too. `window=reference`
(default) keeps it, since the published alphas and sparsities were computed with it;
`window=corrected` tries only xmin in [0.95 x peak, 1.5 x peak], the window the code evidently means.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.scoring.base import BlockScorer, Granularity, check_granularity, groups
from ecoflap_exp.tower_outputs import TowerOutputs

Metric = Literal["alpha_peak", "alpha_mid"]
Window = Literal["reference", "corrected"]

#: the histogram of log10 eigenvalues whose peak sets alpha_peak's window (esd_utils.py: bins=100)
PEAK_BINS = 100
#: candidate xmins compared at once: bounds the (candidates x eigenvalues) work array
CHUNK_ELEMENTS = 1 << 20


def spectrum(weight: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of W^T W, ascending: the squared singular values of W in float32, as the
    reference computes them (esd_utils.py:110-113). On a 7B model these SVDs are the scorer's cost."""
    return torch.linalg.svdvals(weight.detach().float()).square().sort().values


def peak_window(eigs: torch.Tensor, window: Window = "reference") -> torch.Tensor:
    """Which eigenvalues alpha_peak tries as xmin (every one but the largest, up to 1.5 x the peak
    of the log10 histogram, from the reference's lower bound or 0.95 x the peak); in the eigenvalues'
    own precision, as the reference bins them."""
    logs = eigs.log10()
    low, high = logs.min(), logs.max()
    counts = torch.histc(logs, PEAK_BINS, min=float(low), max=float(high))
    peak = 10 ** torch.linspace(low, high, PEAK_BINS + 1, device=eigs.device)[torch.argmax(counts)]
    # the reference's lower bound is the log10 of an eigenvalue (see the module's docstring)
    lower = torch.log10(0.95 * peak) if window == "reference" else 0.95 * peak
    tried = (eigs >= lower) & (eigs <= 1.5 * peak)
    tried[-1] = False
    return tried


def power_law_alpha(eigs: torch.Tensor, metric: Metric, window: Window = "reference") -> float:
    """The power-law exponent of an ascending spectrum's tail, xmin chosen by `metric` (NaN for a
    spectrum without one: fewer than two eigenvalues, a zero one, or all equal)."""
    count = len(eigs)
    if count < 2 or not 0 < eigs[0] < eigs[-1]:
        return math.nan
    x = eigs.double()
    logs = x.log()
    tail_sums = logs.flip(0).cumsum(0).flip(0)  # sum of log x_j over j >= i
    tail_sizes = count - torch.arange(count, dtype=torch.float64, device=x.device)
    alphas = 1 + tail_sizes / (tail_sums - tail_sizes * logs)
    if metric == "alpha_mid":
        return float(alphas[count // 2])
    candidates = peak_window(eigs, window).nonzero().flatten()
    if len(candidates) == 0:  # the corrected window can hold no eigenvalue but the largest
        return math.nan
    distances = torch.cat([ks_distances(x, alphas, chunk) for chunk in candidates.split(
        max(1, CHUNK_ELEMENTS // count))])
    return float(alphas[candidates[torch.argmin(distances)]])  # the first of equal distances, as the reference


def ks_distances(x: torch.Tensor, alphas: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """For each candidate xmin index i: max over j >= i of |fitted CDF - empirical CDF| on the tail,
    |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n_i|."""
    j = torch.arange(len(x), device=x.device)
    ranks = (j[None, :] - starts[:, None]).double()
    tail = ranks >= 0
    fitted = 1 - (x[None, :] / x[starts, None]) ** (1 - alphas[starts, None])
    gaps = (fitted - ranks / (len(x) - starts[:, None])).abs()
    return torch.where(tail, gaps, 0.0).amax(1)


class AlphaScorer(BlockScorer):
    """Per matrix the alpha of its spectrum (`info["alpha"]`); per block the plain mean of its
    matrices' alphas (the reference's mapping_type=block_wise, lib/prune.py:169), or one group per
    matrix with granularity=matrix (the reference's layer-wise mapping)."""

    name = "alpha"

    def __init__(self, metric: Metric = "alpha_peak", granularity: Granularity = "block", window: Window = "reference"):
        self.metric = metric
        self.granularity = check_granularity(granularity)
        self.window = window

    @torch.no_grad()
    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None, outputs: TowerOutputs | None = None) -> dict[str, float]:
        alphas = {}
        for m in adapter.matrices():
            alpha = power_law_alpha(spectrum(m.weight), self.metric, self.window)
            if not math.isfinite(alpha):
                raise UserError(f"{m.name} ({m.shape[0]}x{m.shape[1]}) has no power-law tail in its spectrum to fit "
                                f"(fewer than two eigenvalues, a zero one, or all equal); scorer=alpha needs "
                                f"full-rank matrices")
            alphas[m.name] = alpha
        self.info = {"alpha": alphas}
        return {name: sum(alphas[m.name] for m in matrices) / len(matrices)
                for name, matrices in groups(adapter, self.granularity).items()}
