"""open_clip CLIP: the fused in_proj (one matrix, as ECoFLaP's CoOp pruner; or q/k/v slices) and
the out_proj input the fused kernel hides from hooks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecoflap_exp.models.open_clip import OpenCLIPAdapter, attention_context
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.first import FirstOrderScorer
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer
from ecoflap_exp.walk import capture_inputs, collect_stats

CAPTIONS = ["a photo of a cat", "a red car on a road", "two dogs playing", "a plate of food",
            "a mountain lake", "an old building", "a person running", "a bowl of fruit"]


def tiny_clip(**kw):
    return OpenCLIPAdapter("clip_tiny", init="random", **kw)


def batches(adapter, n=8, size=4):
    rng = np.random.default_rng(0)
    samples = [(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), CAPTIONS[i % 8]) for i in range(n)]
    return [adapter.collate(samples[i : i + size]) for i in range(0, n, size)]


def test_towers_and_matrices():
    adapter = tiny_clip()
    vision, text = adapter.towers()
    assert (vision.name, len(vision.blocks), text.name, len(text.blocks)) == ("vision", 2, "text", 2)
    assert {t.wanda_group for t in (vision, text)} == {"row"}  # CoOp's CLIP pruner compares per row
    names = [m.name.removeprefix(vision.blocks[0].name + ".") for m in vision.blocks[0].matrices]
    # the official unit: in_proj_weight is ONE matrix of 3d rows
    assert names == ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
    fused = vision.blocks[0].matrices[0]
    assert fused.shape == (96, 32) and fused.weight.data_ptr() == vision.blocks[0].module.attn.in_proj_weight.data_ptr()
    split = tiny_clip(split_qkv=True).towers()[0].blocks[0]
    names = [m.name.removeprefix(split.name + ".") for m in split.matrices]
    assert names == ["attn.in_proj.q", "attn.in_proj.k", "attn.in_proj.v", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
    q, k, v = split.matrices[:3]
    assert q.param is k.param is v.param and q.shape == (32, 32)
    assert torch.equal(torch.cat([q.weight, k.weight, v.weight]), q.param.data)


def test_sparsegpt_prunes_the_fused_in_proj_as_one_matrix():
    """CoOp's pruner hands SparseGPT the whole 3d x d in_proj: each 128-column block's mask is chosen
    over all 3d rows at once. Same as SparseGPT on that matrix alone with the block input's Hessian."""
    adapter, twin = tiny_clip(), tiny_clip()
    tower = adapter.towers()[0]
    block = tower.blocks[0]
    inputs = capture_inputs(adapter, tower, batches(adapter))
    normed = torch.cat([block.module.ln_1(inp.hidden).reshape(-1, 32) for inp in inputs])
    pruner = SparseGPTPruner(blocksize=16)
    plan = {b.name: 0.5 if b.name == block.name else 0.0 for b in adapter.blocks()}
    SequentialEngine(adapter, pruner, plan).run(batches(adapter))
    stats = pruner.new_stats(32, torch.device("cpu"))
    for part in normed.split(len(normed) // 2):
        stats.add(part, 4)
    alone = twin.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    pruner.prune(alone, stats, 0.5, None, None)
    pruned = block.module.attn.in_proj_weight.detach()
    assert torch.equal(pruned == 0, alone == 0)
    torch.testing.assert_close(pruned, alone, rtol=1e-5, atol=1e-6)
    rows_pruned = (pruned == 0).reshape(3, 32, 32).sum((1, 2))  # q, k and v lose different shares
    assert int(rows_pruned.sum()) == 96 * 32 // 2 and len(set(rows_pruned.tolist())) > 1


@pytest.mark.parametrize("causal", [False, True])
def test_recomputed_context_is_what_out_proj_receives(causal):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.full((7, 7), float("-inf")).triu(1) if causal else None
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        context = attention_context(mha, (x, x, x), {"need_weights": False, "attn_mask": mask})
        torch.testing.assert_close(F.linear(context, mha.out_proj.weight, mha.out_proj.bias), expected)
        bool_mask = torch.ones(7, 7, dtype=torch.bool).triu(1)
        if causal:
            torch.testing.assert_close(attention_context(mha, (x, x, x), {"attn_mask": bool_mask}), context)


def coop_hacky_attention(attn, x):
    """CoOp's pruner (ylsung/ECoFLaP CoOp fork): the shadow Attention module sharing in_proj and out_proj,
    called without any mask: q * scale @ k^T, softmax, @ v; out_proj's input is that context."""
    batch, tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).reshape(batch, tokens, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, width)


def test_text_out_proj_statistics_as_coops_pruner_collects_them():
    """text_attention_stats=unmasked (ECoFLaP's CLIP rows): the text tower's out_proj statistics come from
    attention over every position (CoOp's shadow module, no causal mask); its forward stays causal."""
    adapter = tiny_clip(text_attention_stats="unmasked")
    tower = adapter.towers()[1]
    block = tower.blocks[0]
    inputs = capture_inputs(adapter, tower, batches(adapter))
    stats = collect_stats(tower, block, inputs, WandaPruner().new_stats, adapter.device)
    out = block.matrices[1]
    normed = [block.module.ln_1(inp.hidden) for inp in inputs]
    contexts = [coop_hacky_attention(block.module.attn, n) for n in normed]
    expected = torch.cat([c.reshape(-1, 32) for c in contexts]).pow(2).sum(0) / 8
    torch.testing.assert_close(stats[out].sq_norms, expected, rtol=1e-5, atol=1e-6)
    twin = tiny_clip()  # the same weights, causal statistics
    twin_tower = twin.towers()[1]
    causal = collect_stats(twin_tower, twin_tower.blocks[0], inputs, WandaPruner().new_stats, twin.device)
    assert not torch.allclose(causal[twin_tower.blocks[0].matrices[1]].sq_norms, stats[out].sq_norms)
    # the masks Wanda then chooses differ in the text tower's out_proj only
    for a in (adapter, twin):
        SequentialEngine(a, WandaPruner(), {b.name: 0.5 for b in a.blocks()}).run(batches(a))
    changed = {m.name for m, n in zip(adapter.matrices(), twin.matrices(), strict=True)
               if not torch.equal(m.weight == 0, n.weight == 0)}
    assert changed and all(name.startswith("transformer.") for name in changed)


def test_statistics_come_from_the_real_inputs():
    adapter = tiny_clip()
    tower = adapter.towers()[1]  # text: causal mask
    block = tower.blocks[0]
    inputs = capture_inputs(adapter, tower, batches(adapter))
    stats = collect_stats(tower, block, inputs, WandaPruner().new_stats, adapter.device)
    q, out, fc, proj = block.matrices
    normed = [block.module.ln_1(inp.hidden) for inp in inputs]
    expected = torch.cat([n.reshape(-1, 32) for n in normed]).pow(2).sum(0) / 8
    torch.testing.assert_close(stats[q].sq_norms, expected, rtol=1e-5, atol=1e-6)
    mask = inputs[0].kwargs["attn_mask"]
    contexts = [attention_context(block.module.attn, (n, n, n), {"attn_mask": mask}) for n in normed]
    expected_out = torch.cat([c.reshape(-1, 32) for c in contexts]).pow(2).sum(0) / 8
    torch.testing.assert_close(stats[out].sq_norms, expected_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
def test_both_towers_pruned_exactly(pruner):
    adapter = tiny_clip()
    plan = {b.name: 0.5 for b in adapter.blocks()}
    reports = SequentialEngine(adapter, pruner, plan).run(batches(adapter))
    summary = verify(adapter, plan, None, reports)
    assert summary["overall"] == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in summary["per_matrix"].values())
    assert torch.isfinite(adapter.loss(batches(adapter)[0]))


def test_contrastive_loss_by_hand_and_scorers_run():
    adapter = tiny_clip()
    batch = batches(adapter)[0]
    with torch.no_grad():
        image = F.normalize(adapter.model.encode_image(batch["image"]), dim=-1)
        text = F.normalize(adapter.model.encode_text(batch["text"]), dim=-1)
        logits = adapter.model.logit_scale.exp() * image @ text.t()
        expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
        assert adapter.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    zeroth = ZerothOrderScorer(num_samples=8).scores(adapter, batches(adapter))
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())
    first = FirstOrderScorer().scores(adapter, batches(adapter))
    assert set(zeroth) == set(first) == {b.name for b in adapter.blocks()}
    assert all(v > 0 for v in first.values())


def test_prefix_reuse_across_towers_gives_the_naive_estimates():
    adapter = tiny_clip()
    fast = ZerothOrderScorer(num_samples=8, granularity="matrix").scores(adapter, batches(adapter))
    slow = ZerothOrderScorer(num_samples=8, granularity="matrix", reuse_prefix=False).scores(adapter, batches(adapter))
    assert fast == pytest.approx(slow, rel=1e-4)


def test_caption_formats_read_the_same_pairs(tmp_path):
    from ecoflap_exp.data.caption_pairs import ImageCaptionCalibration, read_pairs
    from ecoflap_exp.errors import UserError
    from tests.fixtures import write_caption_pairs

    files = write_caption_pairs(tmp_path)
    pairs = {fmt: read_pairs(str(path)) for fmt, path in files.items()}
    assert pairs["tsv"] == pairs["csv"] == pairs["json"] and len(pairs["tsv"]) == 8
    adapter = tiny_clip()
    batch = ImageCaptionCalibration(str(files["tsv"]), num_samples=4, batch_size=4).batches(adapter)[0]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["text"].shape == (4, 16)
    bad = tmp_path / "bad.tsv"
    bad.write_text("image\tcaption\nimages/00000.jpg\ta cat\nimages/00001.jpg\t\n")
    with pytest.raises(UserError, match="line 3"):
        read_pairs(str(bad))
    with pytest.raises(UserError, match="no/such.tsv"):
        read_pairs(str(tmp_path / "no/such.tsv"))


def test_clip_vitb16_follows_coop_dtype_where_the_device_has_it():
    """CoOp's ZeroshotCLIP runs OpenAI's CLIP in fp16 (its losses in fp32); fp32 on the CPU. The
    resolved dtype is what the run's record shows."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[2]
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        for model in ("clip_vitb16", "hf_clip_vitb16"):
            assert compose("config", [f"model={model}", "device=cpu"]).model.dtype == "float32"
            assert compose("config", [f"model={model}", "device=cuda:1"]).model.dtype == "float16"
            auto = compose("config", [f"model={model}"]).model.dtype
            assert auto == ("float16" if torch.cuda.is_available() else "float32")
        assert compose("config", ["model=clip_vitb16"]).model.split_qkv is False


def test_fp16_clip_loss_is_fp32():
    adapter = tiny_clip(dtype="float16")
    assert next(adapter.model.parameters()).dtype == torch.float16
    assert adapter.loss(batches(adapter)[0]).dtype == torch.float32


@pytest.mark.parametrize("split_qkv", [False, True])
def test_per_matrix_id_of_the_fused_in_proj_and_its_slices(split_qkv):
    """A slice's ID is of its own rows' output; a bias shifts every point alike and leaves the ID."""
    from ecoflap_exp.scoring.id_estimators import twonn
    from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer

    adapter = tiny_clip(split_qkv=split_qkv)
    calib = batches(adapter, n=40, size=8)
    scorer = IntrinsicDimensionScorer(granularity="matrix")
    scorer.scores(adapter, calib)
    ids = scorer.info["intrinsic_dim"]
    block = adapter.towers()[0].blocks[1]
    attn_inputs, fc_outputs = [], []
    hooks = [block.module.attn.register_forward_pre_hook(lambda _m, args: attn_inputs.append(args[0])),
             block.module.mlp.c_fc.register_forward_hook(lambda _m, _a, out: fc_outputs.append(out))]
    with torch.no_grad():
        for batch in calib:
            adapter.forward(batch)
    for h in hooks:
        h.remove()
    x = torch.cat(attn_inputs)
    qkv = x @ block.module.attn.in_proj_weight.detach().t()
    width = x.shape[-1]
    wanted = ({f"{block.name}.attn.in_proj.{p}": qkv[..., i * width : (i + 1) * width] for i, p in enumerate("qkv")}
              if split_qkv else {f"{block.name}.attn.in_proj": qkv})
    for name, out in wanted.items():
        assert ids[name] == pytest.approx(twonn(out.reshape(len(out), -1)), rel=1e-6)
    with_bias = torch.cat(fc_outputs)
    assert ids[f"{block.name}.mlp.c_fc"] == pytest.approx(twonn(with_bias.reshape(len(with_bias), -1)), rel=1e-4)
    assert sum(name.startswith("transformer.") for name in ids) == (12 if split_qkv else 8)


def test_taylor_sketches_are_w_times_the_mean_gradient_of_each_slice():
    """allocation.base_score=taylor: |w * mean over batches of dL/dw|, for each q/k/v slice of the
    fused in_proj from the shared parameter's gradient; exact sketches hold every value once."""
    from ecoflap_exp.scoring.sketches import weight_sketches

    adapter = tiny_clip(split_qkv=True)
    calib = batches(adapter, n=8, size=4)
    sketches = weight_sketches(adapter, calib, "taylor", 1 << 20)
    matrices = list(adapter.matrices())
    params = list(dict.fromkeys(m.param for m in matrices))
    total = [torch.zeros_like(p) for p in params]
    for batch in calib:
        for t, g in zip(total, torch.autograd.grad(adapter.loss(batch), params), strict=True):
            t += g
    grads = dict(zip(params, total, strict=True))
    assert len(matrices) == 24 and len(params) == 16  # 4 blocks x (in_proj shared by q, k, v + 3)
    for m in matrices:
        expected = (m.weight * grads[m.param][m.rows] / len(calib)).abs().flatten().sort().values
        assert (sketches[m.name].counts == 1).all()
        np.testing.assert_allclose(sketches[m.name].values, expected.double().numpy(), rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in adapter.model.parameters())
