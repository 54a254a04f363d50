"""AlphaPruning's alpha against a transcription of the reference's estimator (random matrices of
several shapes, fp32 and bf16; the tiny LLaMA's matrices) and against spectra of a known power law;
the tiny LLaMA pruned sequentially with Wanda as the reference's wanda_ww prunes it (the same masks
under count=reference); runs through the runner, the API and a VLM."""

import math

import pytest
import torch
from torch import nn

from ecoflap_exp import prune
from ecoflap_exp.errors import UserError
from ecoflap_exp.runner import run
from ecoflap_exp.scoring.alpha import AlphaScorer, peak_window, power_law_alpha, spectrum
from tests.allocation.test_alpha import reference_ww_sparsity
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import caption_run, tower_sparsity
from tests.scoring.test_intrinsic_dim import llama

FIX_FINGERS = {"alpha_peak": "xmin_peak", "alpha_mid": "xmin_mid"}


def reference_alpha(matrix, fix_fingers, bins=100, xmin_pos=2):
    """haiquanlu/AlphaPruning @ 5f0e9845549ec8ee6dc395f1410566f26cc9e54e, lib/esd_utils.py:104-172
    (net_esd_estimator's body for one nn.Linear weight, filter_zeros=False, its default), transcribed."""
    matrix = matrix.clone().cpu()
    matrix = matrix.to(torch.float32)
    eigs = torch.square(torch.linalg.svdvals(matrix).flatten())
    eigs, _ = torch.sort(eigs, descending=False)
    nz_eigs = eigs
    N = len(nz_eigs)
    log_nz_eigs = torch.log(nz_eigs)
    if fix_fingers == "xmin_mid":
        i = int(len(nz_eigs) / xmin_pos)
        n = float(N - i)
        final_alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
    else:
        alphas = torch.zeros(N - 1)
        Ds = torch.ones(N - 1)
        if fix_fingers == "xmin_peak":
            hist_nz_eigs = torch.log10(nz_eigs)
            min_e, max_e = hist_nz_eigs.min(), hist_nz_eigs.max()
            counts = torch.histc(hist_nz_eigs, bins, min=min_e, max=max_e)
            boundaries = torch.linspace(min_e, max_e, bins + 1)
            h = counts, boundaries
            ih = torch.argmax(h[0])
            xmin2 = 10 ** h[1][ih]
            xmin_min = torch.log10(0.95 * xmin2)
            xmin_max = 1.5 * xmin2
        for i, xmin in enumerate(nz_eigs[:-1]):
            if fix_fingers == "xmin_peak":
                if xmin < xmin_min:
                    continue
                if xmin > xmin_max:
                    break
            n = float(N - i)
            seq = torch.arange(n)
            alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
            alphas[i] = alpha
            if alpha > 1:
                Ds[i] = torch.max(torch.abs(1 - (nz_eigs[i:] / xmin) ** (-alpha + 1) - seq / n))
        min_D_index = torch.argmin(Ds)
        final_alpha = alphas[min_D_index]
    return final_alpha.item()


def reference_metrics(blocks, fix_fingers):
    """net_esd_estimator(blocks, fix_fingers)['alpha']: every nn.Linear of the blocks in named_modules
    order (lib/esd_utils.py:102-103, 179)."""
    return [reference_alpha(m.weight.data, fix_fingers) for _, m in blocks.named_modules() if isinstance(m, nn.Linear)]


# ---- the estimator ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["alpha_peak", "alpha_mid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 64), (8, 200), (200, 8), (96, 256), (300, 500)])
def test_alpha_equals_the_reference_estimator(metric, dtype, shape):
    g = torch.Generator().manual_seed(shape[0] + shape[1])
    for weight in (torch.randn(shape, generator=g),  # Marchenko-Pastur bulk
                   torch.randn(shape, generator=g) * torch.rand(shape[1], generator=g) ** 3):  # a spread spectrum
        weight = weight.to(dtype)
        assert power_law_alpha(spectrum(weight), metric) == pytest.approx(
            reference_alpha(weight, FIX_FINGERS[metric]), rel=2e-5)


def power_law_matrix(alpha, rows=1500, cols=1000, seed=0):
    """A rows x cols matrix whose W^T W has Pareto eigenvalues, density ~ lambda^-alpha above 0.01."""
    g = torch.Generator().manual_seed(seed)
    eigs = 0.01 * torch.rand(cols, generator=g, dtype=torch.float64) ** (-1 / (alpha - 1))
    left, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    return (left * eigs.sqrt()) @ right.T


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("metric", ["alpha_peak", "alpha_mid"])
def test_alpha_of_a_known_power_law_spectrum(alpha, metric):
    estimate = power_law_alpha(spectrum(power_law_matrix(alpha)), metric)
    # the MLE of alpha - 1 has a relative standard error of 1/sqrt(tail size); here >= 500 eigenvalues
    assert estimate == pytest.approx(alpha, abs=4 * (alpha - 1) / math.sqrt(500))


def test_the_corrected_window_tries_only_xmin_from_095_of_the_peak():
    """A Marchenko-Pastur bulk (random 200 x 400: its log-spectrum peaks inside the range, as trained
    weights' bulks do): the reference's lower bound, log10(0.95 x peak) < 0, admits every eigenvalue
    below the peak; the corrected window starts at 0.95 x the peak and is a strict part of it."""
    eigs = spectrum(torch.randn(200, 400, generator=torch.Generator().manual_seed(0)))
    logs = eigs.log10()
    counts = torch.histc(logs, 100, min=float(logs.min()), max=float(logs.max()))
    peak = 10 ** torch.linspace(logs.min(), logs.max(), 101)[torch.argmax(counts)]
    assert eigs[0] < 0.95 * peak < eigs[-1]  # an interior peak
    reference, corrected = peak_window(eigs, "reference"), peak_window(eigs, "corrected")
    assert reference[0] and bool(reference[:-1][eigs[:-1] <= 1.5 * peak].all())
    below_largest = torch.arange(len(eigs)) < len(eigs) - 1
    assert torch.equal(corrected, (eigs >= 0.95 * peak) & (eigs <= 1.5 * peak) & below_largest)
    assert 0 < corrected.sum() < reference.sum()


def test_spectra_without_a_tail_are_refused():
    assert math.isnan(power_law_alpha(spectrum(torch.eye(8)), "alpha_mid"))  # all eigenvalues equal
    assert math.isnan(power_law_alpha(spectrum(torch.ones(1, 8)), "alpha_peak"))  # one eigenvalue
    adapter = llama(blocks=1)
    next(adapter.matrices()).weight.zero_()
    with pytest.raises(UserError, match="no power-law tail.*full-rank"):
        AlphaScorer().scores(adapter, [])


# ---- the scorer on the tiny LLaMA ------------------------------------------------------------


@pytest.mark.parametrize("metric", ["alpha_peak", "alpha_mid"])
def test_block_scores_are_the_mean_of_the_reference_alphas(metric):
    adapter = llama(blocks=3)
    scorer = AlphaScorer(metric=metric)
    scores = scorer.scores(adapter, [])
    expected = reference_metrics(adapter.model.model.layers, FIX_FINGERS[metric])
    assert list(scorer.info["alpha"].values()) == pytest.approx(expected, rel=2e-5)
    blocks = list(adapter.blocks())
    assert list(scores) == [b.name for b in blocks]
    for i, b in enumerate(blocks):  # lib/prune.py:169: np.mean of the block's 7 matrices
        assert scores[b.name] == pytest.approx(sum(expected[7 * i : 7 * i + 7]) / 7, rel=2e-5)
    per_matrix = AlphaScorer(metric=metric, granularity="matrix").scores(adapter, [])
    assert per_matrix == scorer.info["alpha"]


def token_samples(count=8, length=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 259, (length,), generator=g) for _ in range(count)]


@torch.no_grad()
def reference_wanda(model, samples, ratios):
    """lib/prune.py:217-322 (prune_wanda, unstructured, use_variant off) with WrappedGPT.add_batch
    (lib/layerwrapper.py), transcribed; each layer's inputs from full forwards of one sample at a time,
    earlier layers already pruned (the reference's inps/outs loop)."""
    layers = model.model.layers
    k = 0
    for layer in layers:
        subset = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
        scaler_row = {name: torch.zeros(m.weight.shape[1]) for name, m in subset.items()}
        nsamples = dict.fromkeys(subset, 0)

        def add_batch(_, inp, out, name, scaler_row=scaler_row, nsamples=nsamples):
            inp = inp[0].data
            tmp = inp.shape[0]
            inp = inp.reshape((-1, inp.shape[-1])).t()
            scaler_row[name] *= nsamples[name] / (nsamples[name] + tmp)
            nsamples[name] += tmp
            inp = inp.type(torch.float32)
            scaler_row[name] += torch.norm(inp, p=2, dim=1) ** 2 / nsamples[name]

        handles = [m.register_forward_hook(lambda mod, i, o, name=name: add_batch(mod, i, o, name))
                   for name, m in subset.items()]
        for sample in samples:
            model(input_ids=sample[None])
        for h in handles:
            h.remove()
        for name in subset:
            W_metric = torch.abs(subset[name].weight.data) * torch.sqrt(scaler_row[name].reshape((1, -1)))
            W_mask = torch.zeros_like(W_metric) == 1
            sort_res = torch.sort(W_metric, dim=-1, stable=True)
            indices = sort_res[1][:, : int(W_metric.shape[1] * ratios[k])]
            k += 1
            W_mask.scatter_(1, indices, True)
            subset[name].weight.data[W_mask] = 0


@pytest.mark.parametrize("sparsity", [0.5, 0.6])
def test_tiny_llama_masks_are_the_reference_wanda_ww_masks(sparsity):
    """main.py --prune_method wanda_ww --ww_metric alpha_peak --epsilon 0.3: alphas of the dense
    weights, block-wise ratios, then Wanda per row with int(cols x ratio), layer by layer."""
    ours = llama(blocks=4).model
    theirs = llama(blocks=4).model
    metrics = reference_metrics(theirs.model.layers, "xmin_peak")
    sizes = [m.weight.numel() for _, m in theirs.model.layers.named_modules() if isinstance(m, nn.Linear)]
    ratios = reference_ww_sparsity(metrics, sizes, 7, sparsity, epsilon=0.3)
    assert len(set(ratios)) == 4 and max(ratios) > sparsity + 0.1  # spread beyond the default ceiling
    reference_wanda(theirs, token_samples(), ratios)
    report = prune(ours, token_samples(), scorer="alpha", sparsity=sparsity, max_sparsity=1.0, batch_size=1,
                   overrides=["pruner.count=reference"])
    assert report.method == "alpha+wanda"
    assert list(report.plan.values()) == pytest.approx(ratios[::7], rel=1e-5)
    for (name, a), b in zip(ours.model.layers.named_modules(), theirs.model.layers.modules(), strict=True):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.weight == 0, b.weight == 0), name


# ---- through the runner ----------------------------------------------------------------------


@pytest.mark.slow
def test_method_preset_through_the_runner(tmp_path):
    record = run(config(tmp_path, "+experiment/method=alpha", "sparsity=0.6", "suite=none",
                        "model.arch_overrides={num_hidden_layers: 4}"))
    assert record.method == "alpha+wanda"
    assert record.config["max_sparsity"] == 1.0 and record.config["allocation"]["epsilon"] == 0.3
    assert record.achieved.overall == pytest.approx(0.6, abs=1e-4)
    plan = record.plan
    assert max(plan.values()) > 0.7  # beyond the default ceiling sparsity + 0.1
    alphas = record.scores
    assert sorted(plan, key=plan.get) == sorted(alphas, key=alphas.get)  # higher alpha, higher sparsity


@pytest.mark.slow
def test_scorer_alone_keeps_the_runs_ceiling_and_runs_on_a_vlm(tmp_path):
    record = caption_run(tmp_path, "model=blip2_t5_tiny", "scorer=alpha", "sparsity=0.5")
    assert record.method == "alpha+wanda" and len(set(record.plan.values())) > 1
    assert max(record.plan.values()) == pytest.approx(0.6)  # held at the ceiling sparsity + 0.1
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
    for tower, (planned, achieved) in tower_sparsity(record).items():
        assert achieved == pytest.approx(planned, abs=2e-3), tower
    assert set(record.scorer_info["alpha"]) == {m.name for m in record.matrices}
