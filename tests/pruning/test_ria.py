"""RIA against a transcription of the reference's own code (the oracle below): its metric in every
weight dtype, its masks bit for bit under count=reference (whole matrix, per row, N:M, N:M after
channel reallocation and after the linear-sum-assignment rounds), the weights left in their original
order with W[:, order] N:M, the tiny LLaMA pruned sequentially as the reference prunes it, and RIA
through the runner, the API, a VLM and a non-uniform allocation."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ecoflap_exp import prune
from ecoflap_exp.errors import UserError
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.masks import NM
from ecoflap_exp.pruning.ria import RiaPruner, assignment_scores, reallocated_nm_mask, reallocated_order, ria_metric
from ecoflap_exp.runner import run
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import caption_run, tower_sparsity
from tests.pruning.test_engine import batches_for, make_llama, prune_by_full_forwards
from tests.pruning.test_sparsegpt import layer, ours
from tests.test_api import tiny_llama, token_samples

# --- the oracle: transcribed from biomedical-cybernetics/Relative-importance-and-activation-pruning,
# commit 7bc55b06924659ea977f7804b773ce3ef0d55c2f. Changes: one matrix at a time (W, scaler_row and the
# arguments passed in), 'cuda' / 'cuda:7' -> the CPU, prints and the printed scores (pre_score, W_strip_value)
# dropped, --importance_score sum, --fast off, --semi_sparse_acc / --reconstruction / --gptq off.

class ScalerRow:
    """lib/layerwrapper.py:31-57, WrappedGPT.add_batch (scaler_row only); `inp` is (tokens, columns)
    of `tmp` batch entries."""

    def __init__(self, cols, device):
        self.scaler_row = torch.zeros((cols), device=device)
        self.nsamples = 0

    def add(self, inp, tmp):
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def maximize_total_value(matrix):
    # lib/prune.py:30-33
    row_indices, col_indices = linear_sum_assignment(matrix, maximize=True)
    return col_indices


def lsa(W_metric, lsa_column, shape, rows, prune_n, prune_m, device):
    # lib/prune.py:321-353
    W_metric = W_metric.to(device)
    score_matrix = torch.zeros(shape, shape).to(device)  # score matrix of LSA
    num_parallel = 1  # How many parallel computation will be used.
    for row in range(shape // num_parallel):
        strip_idx = torch.zeros(num_parallel, shape, prune_m).long().to(device)
        block_columns = torch.arange(prune_m).to(device)
        columns_mask = block_columns != lsa_column
        block_columns = block_columns[columns_mask]
        strip_idx[:, :, 0] = (rows * prune_m).reshape(1, -1) + lsa_column
        strip_idx[:, :, 1:] = block_columns.reshape(1, 1, -1) + torch.arange(
            row * num_parallel, (row + 1) * num_parallel).reshape(-1, 1, 1).to(device) * prune_m
        tmp = W_metric[:, strip_idx].transpose(1, 0).transpose(2, 1)
        W_mask = torch.zeros_like(tmp).to(device)
        tmp_index = torch.sort(tmp, dim=-1)[1]
        W_mask.scatter_(dim=-1, index=tmp_index[:, :, :, :prune_n], value=1)
        score_matrix[:, row * num_parallel:(row + 1) * num_parallel] = torch.sum(
            torch.sum((tmp * (W_mask == 0)), dim=-1), dim=-1).transpose(1, 0)
    score_matrix = score_matrix.transpose(1, 0)
    col_indices = torch.LongTensor(maximize_total_value(score_matrix.cpu())).to(device)
    idx = torch.arange(W_metric.shape[1]).long().to(device)
    idx[rows * prune_m + lsa_column] = col_indices * prune_m + lsa_column
    return idx, score_matrix  # the score matrix returned too, for the test


def reference_prune_ria(W, scaler_row, sparsity_ratio, prune_n=0, prune_m=0, a=0.5, per_outneuron=False,
                        reallocation=False, use_lsa=False):
    """lib/prune.py:235-415 for one matrix; `prune_n` is the reference's: how many of every `prune_m`
    are pruned. Returns the pruned weights, W_mask, the channel order (reallocation) and W_metric."""
    W = W.clone()
    index = None
    W_metric = (torch.abs(W)/torch.sum(torch.abs(W), dim=0) + torch.abs(W)/torch.sum(torch.abs(W), dim=1).reshape(-1, 1)) * (torch.sqrt(scaler_row.reshape((1,-1))))**a  # noqa: E501, E231, E226
    W_mask = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
    if prune_n != 0:
        if reallocation:
            sorted_idx = torch.sort(torch.sum(W_metric, dim=0))[1]
            index = torch.zeros_like(sorted_idx)
            for ii in range(1, prune_m+1):
                if ii % 2 == 1:
                    index[ii-1::prune_m] = sorted_idx[int(W_metric.shape[1]* (ii-1)/prune_m) :int(W_metric.shape[1]* ii/prune_m)]  # noqa: E501
                else:
                    index[ii-1::prune_m] = sorted_idx[int(W_metric.shape[1]* (ii-1)/prune_m) :int(W_metric.shape[1]* ii/prune_m)].flip(0)  # noqa: E501
            W_metric_resort = W_metric[:, index].clone()
            W_mask_permute = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
            for ii in range(W_metric.shape[1]):
                if ii % prune_m == 0:
                    tmp = W_metric_resort[:,ii:(ii+prune_m)].float()
                    W_mask_permute.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
            if use_lsa:
                permutation_device = "cpu"
                blocks = 1
                shape = W_metric.shape[1]//prune_m//blocks
                rows = torch.arange(shape).to(permutation_device)
                lsa_columns = torch.arange(prune_m).to(permutation_device)
                for lsa_column in lsa_columns:
                    for ii in range(blocks):
                        index_tmp = index[ii*len(index)//blocks:(ii+1)*len(index)//blocks]
                        permute_idx, _ = lsa(W_metric[:, index_tmp], lsa_column, shape, rows, prune_n, prune_m, permutation_device)  # noqa: E501
                        permute_idx = permute_idx.to(index.device)
                        index[ii*len(index)//blocks:(ii+1)*len(index)//blocks] = index_tmp[permute_idx]
                    W_metric_permute = W_metric[:, index]
                    W_mask_permute = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
                    for ii in range(W_metric.shape[1]):
                        if ii % prune_m == 0:
                            tmp = W_metric_permute[:,ii:(ii+prune_m)].float()
                            W_mask_permute.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
            W_mask = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
            W_mask[:, index] = W_mask_permute
            W[W_mask] = 0
        else:
            W_mask = (torch.zeros_like(W_metric) == 1)
            for ii in range(W_metric.shape[1]):
                if ii % prune_m == 0:
                    tmp = W_metric[:,ii:(ii+prune_m)].float()
                    W_mask.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
            W[W_mask] = 0
    else:
        if per_outneuron:
            sort_res = torch.sort(W_metric, dim=-1, stable=True)
            indices = sort_res[1][:,:int(W_metric.shape[1]*sparsity_ratio)]
            W_mask.scatter_(1, indices, True)
        else:
            thresh = torch.sort(W_metric.flatten())[0][int(W.shape[0]* W.shape[1]*sparsity_ratio)]
            W_mask = (W_metric<=thresh)
        W[W_mask] = 0  ## set weights to zero
    return W, W_mask, index, W_metric

# --- end of the oracle


def reference(W, X, sparsity=0.5, nm=None, group="matrix", **kw):
    stats = ScalerRow(W.shape[1], W.device)
    stats.add(X, 1)
    prune_n, prune_m = (nm.m - nm.n, nm.m) if nm else (0, 0)
    return reference_prune_ria(W, stats.scaler_row, sparsity, prune_n, prune_m, per_outneuron=group == "row", **kw)


def data(rows, cols, dtype=torch.float32, seed=0, ties=False):
    W, X = layer(rows, cols, tokens=64, seed=seed, ties=ties)
    return W.to(dtype), X


SHAPES = [(24, 96), (64, 16), (3, 40), (1, 32), (40, 8)]  # narrow: few rows, few columns
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_metric_is_the_references_to_the_last_bit(dtype, a):
    """Relative importance in the weight's dtype, times sqrt(scaler_row) ** a in fp32."""
    for rows, cols in SHAPES:
        W, X = data(rows, cols, dtype)
        stats = RiaPruner().new_stats(cols, torch.device("cpu"))
        stats.add(X, 1)
        metric = ria_metric(W, stats, a)
        assert metric.dtype == torch.float32
        assert torch.equal(metric, reference(W, X, a=a)[3])


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied weights"])
@pytest.mark.parametrize("group", ["matrix", "row"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unstructured_reference_count_is_the_reference_mask(dtype, sparsity, group, ties):
    """Tied weights (a handful of values, zero among them) in shapes with no all-zero row or column,
    where the reference's metric is NaN (test_an_all_zero_column_and_row_give_no_nan_and_the_exact_count)."""
    for rows, cols in [(24, 96), (64, 16), (40, 8)] if ties else SHAPES:
        W, X = data(rows, cols, dtype, ties=ties)
        assert (W != 0).any(0).all() and (W != 0).any(1).all()
        expected, expected_mask, _, _ = reference(W, X, sparsity, group=group)
        pruned, mask = ours(RiaPruner(count="reference"), W, X, sparsity, group=group)
        assert torch.equal(mask, expected_mask), (rows, cols)
        assert torch.equal(pruned, expected)


@pytest.mark.parametrize("group", ["matrix", "row"])
def test_exact_count_prunes_the_planned_count_among_the_references_choice(group):
    for rows, cols in SHAPES:
        W, X = data(rows, cols)
        _, mask = ours(RiaPruner(group=group), W, X, 0.35)
        _, expected_mask, _, _ = reference(W, X, 0.35, group=group)
        assert int(mask.sum()) == round(rows * cols * 0.35)
        if group == "matrix":  # the k smallest are all <= the reference's threshold
            assert torch.equal(mask & expected_mask, mask)


def test_the_configured_group_is_the_default_and_the_engines_group_wins():
    W, X = data(24, 96)
    _, default = ours(RiaPruner(count="reference"), W, X, 0.5)
    assert torch.equal(default, reference(W, X, 0.5)[1])
    _, per_row = ours(RiaPruner(count="reference"), W, X, 0.5, group="row")
    assert torch.equal(per_row, reference(W, X, 0.5, group="row")[1])
    assert not torch.equal(default, per_row)


def is_nm(mask, nm):
    """Exactly M-N pruned in every M consecutive columns of every row."""
    rows, cols = mask.shape
    return bool((mask.reshape(rows, cols // nm.m, nm.m).sum(-1) == nm.m - nm.n).all())


@pytest.mark.parametrize("nm", [NM(2, 4), NM(4, 8), NM(1, 4), NM(3, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_nm_is_the_references_per_group_choice(dtype, nm):
    for rows, cols in [(24, 96), (3, 16), (40, 8)]:
        W, X = data(rows, cols, dtype)
        expected, expected_mask, _, _ = reference(W, X, nm=nm)
        pruned, mask = ours(RiaPruner(), W, X, nm.sparsity, nm=nm)
        assert torch.equal(mask, expected_mask) and is_nm(mask, nm)
        assert torch.equal(pruned, expected)


@pytest.mark.parametrize("use_lsa", [False, True])
@pytest.mark.parametrize("nm", [NM(2, 4), NM(4, 8), NM(1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reallocation_is_the_references_mask_and_order(dtype, nm, use_lsa):
    """The same channel order and mask as the reference; the mask is N:M in that order; the weights
    stay in their original order, zeroed where the mapped-back mask says, so the layer computes what
    the reference's pruned layer computes, and permuting its inputs the same way gives that output
    from the N:M matrix W[:, order]. (With lsa, a matrix of 5 rows has tied assignments, which
    rounding breaks: test_assignment_scores_are_the_references covers it.)"""
    shapes = [(24, 96), (40, 8), (16, 64), (128, 256)] + ([] if use_lsa else [(5, 16), (1, 8)])
    for rows, cols in shapes:
        for seed in range(3):
            W, X = data(rows, cols, dtype, seed)
            expected, expected_mask, expected_order, metric = reference(W, X, nm=nm, reallocation=True,
                                                                        use_lsa=use_lsa)
            mask, order = reallocated_nm_mask(metric, nm, lsa=use_lsa)
            assert torch.equal(order, expected_order) and torch.equal(mask, expected_mask), (rows, cols, seed)
            assert torch.equal(order.sort().values, torch.arange(cols))
            assert is_nm(mask[:, order], nm)
            pruned, pruner_mask = ours(RiaPruner(reallocation=True, lsa=use_lsa), W, X, nm.sparsity, nm=nm)
            assert torch.equal(pruner_mask, mask) and torch.equal(pruned, expected)
            assert torch.equal(pruned, W.masked_fill(mask, 0))
            x = X.to(dtype)
            assert torch.equal(x @ pruned.t(), x @ W.masked_fill(expected_mask, 0).t())
            xf, wf = X.float(), pruned.float()
            torch.testing.assert_close(xf[:, order] @ wf[:, order].t(), xf @ wf.t())


@pytest.mark.parametrize("nm", [NM(2, 4), NM(4, 8), NM(1, 4), NM(3, 4)])
def test_assignment_scores_are_the_references(nm):
    """Every round's score matrix (receiving group x offering group) is the reference's, to float32
    rounding, narrow matrices included; the refined order stays N:M and keeps at least as much."""
    for rows, cols in [(5, 16), (1, 8), (40, 8), (24, 96), (3, 64)]:
        W, X = data(rows, cols)
        metric = reference(W, X)[3]
        order = reallocated_order(metric, nm)
        for c in range(nm.m):
            _, expected = lsa(metric[:, order], torch.tensor(c), cols // nm.m, torch.arange(cols // nm.m),
                              nm.m - nm.n, nm.m, "cpu")
            torch.testing.assert_close(assignment_scores(metric[:, order], nm, c), expected)
        mask, refined = reallocated_nm_mask(metric, nm, lsa=True)
        assert is_nm(mask[:, refined], nm)
        assert kept(metric, mask) >= kept(metric, reallocated_nm_mask(metric, nm)[0]) - 1e-5


def kept(metric, mask):
    return float(metric[~mask].sum())


def test_reallocation_moves_the_groups_and_lsa_keeps_at_least_as_much():
    W, X = data(32, 128)
    metric = reference(W, X)[3]
    plain = ours(RiaPruner(), W, X, 0.5, nm=NM(2, 4))[1]
    realloc, order = reallocated_nm_mask(metric, NM(2, 4))
    refined, refined_order = reallocated_nm_mask(metric, NM(2, 4), lsa=True)
    assert not is_nm(realloc, NM(2, 4)) and not torch.equal(realloc, plain)
    assert not torch.equal(order, refined_order)
    # each assignment round may keep the current placement, so the total never drops
    assert kept(metric, refined) >= kept(metric, realloc)


def test_reallocation_only_changes_nm_and_lsa_needs_it():
    W, X = data(24, 96)
    assert torch.equal(ours(RiaPruner(reallocation=True, count="reference"), W, X, 0.5)[1],
                       reference(W, X, 0.5)[1])
    with pytest.raises(UserError, match="pruner.reallocation=true"):
        RiaPruner(lsa=True)
    with pytest.raises(UserError, match="pruner.a"):
        RiaPruner(a=-1.0)


def test_an_all_zero_column_and_row_give_no_nan_and_the_exact_count():
    W, X = data(24, 96)
    W[:, 5] = 0
    W[7] = 0
    stats = RiaPruner().new_stats(96, torch.device("cpu"))
    stats.add(X, 1)
    assert torch.isfinite(ria_metric(W, stats, 0.5)).all()
    assert reference(W, X)[3].isnan().any()  # the reference's 0 / 0 there
    pruned, mask = ours(RiaPruner(), W, X, 0.5)
    assert int(mask.sum()) == 24 * 96 // 2 and mask[:, 5].all() and mask[7].all()


class ReferenceRia:
    """The oracle as a pruner for the full-forward sequential reference (tests/pruning/test_engine.py)."""

    needs_inputs = True

    def __init__(self, **kw):
        self.kw = kw

    def new_stats(self, cols, device):
        return ScalerRow(cols, device)

    def prepare(self, weight, stats):
        pass

    def prune(self, weight, stats, sparsity, nm, group):
        prune_n, prune_m = (nm.m - nm.n, nm.m) if nm else (0, 0)
        pruned, mask, _, _ = reference_prune_ria(weight, stats.scaler_row, sparsity, prune_n, prune_m,
                                                 per_outneuron=group == "row", **self.kw)
        weight.copy_(pruned)
        return mask


@pytest.mark.parametrize(("nm", "group", "options"), [
    (None, "matrix", {}), (None, "row", {}), (NM(2, 4), "matrix", {}),
    (NM(2, 4), "matrix", {"reallocation": True}), (NM(4, 8), "matrix", {"reallocation": True, "lsa": True}),
], ids=["matrix", "row", "2:4", "2:4 reallocation", "4:8 lsa"])
def test_tiny_llama_sequentially_is_the_references_pruning(nm, group, options):
    """Block by block, statistics from the pruned model's own forwards (the reference's loop), every
    matrix pruned by the oracle: the same masks and weights as the engine with count=reference."""
    ours_model, reference_model = make_llama(), make_llama()
    plan = {b.name: 0.5 for b in ours_model.blocks()}
    pruner = RiaPruner(group=group, count="reference", **options)
    SequentialEngine(ours_model, pruner, plan, nm).run(batches_for(ours_model))
    reference_options = {"reallocation": options.get("reallocation", False), "use_lsa": options.get("lsa", False)}
    prune_by_full_forwards(reference_model, ReferenceRia(**reference_options), plan, batches_for(reference_model),
                           nm, group_of=lambda block: group)
    for a, b in zip(ours_model.matrices(), reference_model.matrices(), strict=True):
        assert torch.equal(a.weight, b.weight), a.name


def test_through_the_api_the_first_block_is_the_references_mask():
    model = tiny_llama()
    q = model.model.layers[0].self_attn.q_proj
    before = q.weight.detach().clone()
    stats = ScalerRow(before.shape[1], before.device)
    hook = q.register_forward_hook(lambda mod, args, out: stats.add(args[0].detach().reshape(-1, before.shape[1]),
                                                                     args[0].shape[0]))
    samples = token_samples()
    with torch.no_grad():
        for i in range(0, 16, 8):  # prune()'s batches of 8
            model(input_ids=torch.stack(samples[i : i + 8]))
    hook.remove()
    expected = reference_prune_ria(before, stats.scaler_row, 0.5)[1]
    report = prune(model, samples, pruner="ria", sparsity=0.5, overrides=["pruner.count=reference"])
    assert torch.equal(q.weight == 0, expected)
    assert report.method == "ria"


@pytest.mark.slow
def test_runs_through_the_runner_uniform_nm_and_owl(tmp_path):
    uniform = run(config(tmp_path, "+experiment/method=ria", "sparsity=0.5"))
    assert uniform.method == "ria" and uniform.achieved.overall == pytest.approx(0.5, abs=1e-6)
    assert set(uniform.plan.values()) == {0.5} and uniform.metrics["text/ppl"] > 1
    nm = run(config(tmp_path, "pruner=ria", "nm=2:4", "pruner.reallocation=true", "pruner.lsa=true"))
    assert nm.achieved.overall == pytest.approx(0.5, abs=1e-9)
    owl = run(config(tmp_path, "scorer=owl", "pruner=ria", "sparsity=0.5"))
    assert owl.method.endswith("+ria") and len(set(owl.plan.values())) > 1
    assert owl.achieved.overall == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(UserError, match="pruner.reallocation=true"):
        run(config(tmp_path, "pruner=ria", "nm=2:4", "pruner.lsa=true", "force=true"))


@pytest.mark.slow
def test_a_vlm_through_the_runner_reaches_the_plan_per_tower(tmp_path):
    record = caption_run(tmp_path, "model=blip2_t5_tiny", "pruner=ria", "sparsity=0.5")
    for tower, (planned, achieved) in tower_sparsity(record).items():
        assert achieved == pytest.approx(planned, abs=2e-3), tower
    assert record.method == "ria"
