"""The sequential engine against a slow reference that re-runs the whole model for every block."""

from functools import partial

import pytest
import torch

from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.masks import parse_nm
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.pruning.wanda import WandaPruner


def make_llama(arch="llama_tiny", **kw):
    return CausalLMAdapter(arch=arch, init="random", tokenizer="bytes", seed=0, **kw)


def all_tokens(batch, matrix, x):
    """Every token of a matrix's input (batch entries counted as samples)."""
    return x.reshape(-1, x.shape[-1]), x.shape[0] if x.dim() > 2 else 1


@torch.no_grad()
def prune_by_full_forwards(adapter, pruner, plan, batches, nm=None, group_of=lambda block: "row", tokens=all_tokens):
    """Block by block, collect statistics with hooks during full-model forwards, then prune.
    `tokens(batch, matrix, x)` picks the tokens of an input that statistics see; `group_of(block
    name)` is Wanda's comparison group there."""
    for block in adapter.blocks():
        stats = {m.name: pruner.new_stats(m.shape[1], adapter.device) for m in block.matrices}
        current = []

        def observe(mod, args, out, m, stats=stats, current=current):
            stats[m.name].add(*tokens(current[0], m, m.input_of(args, {})))

        handles = [m.input_module.register_forward_hook(partial(observe, m=m)) for m in block.matrices]
        for batch in batches:
            current[:] = [batch]
            adapter.forward(batch)
        for h in handles:
            h.remove()
        for m in block.matrices:
            pruner.prepare(m.weight, stats[m.name])
            pruner.prune(m.weight, stats[m.name], plan[block.name], nm, group_of(block.name))


def batches_for(adapter):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 259, (8, 32), generator=g)
    return [adapter.collate(list(ids[i : i + 4])) for i in (0, 4)]


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
@pytest.mark.parametrize("arch", ["llama_tiny", "opt_tiny"])
def test_sequential_engine_equals_full_forward_reference(pruner, arch):
    blocks_path = "model.layers" if arch == "llama_tiny" else "model.decoder.layers"
    fast, slow = make_llama(arch, blocks_path=blocks_path), make_llama(arch, blocks_path=blocks_path)
    plan = {b.name: s for b, s in zip(fast.blocks(), [0.3, 0.6], strict=True)}
    SequentialEngine(fast, pruner, plan).run(batches_for(fast))
    prune_by_full_forwards(slow, pruner, plan, batches_for(slow))
    assert_same_pruning(fast, slow)


def assert_same_pruning(a_adapter, b_adapter):
    """The same masks and, to float tolerance, the same weights in every matrix."""
    for a, b in zip(a_adapter.matrices(), b_adapter.matrices(), strict=True):
        assert torch.equal(a.weight == 0, b.weight == 0), a.name
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_second_block_sees_pruned_first_block():
    """Statistics of block 1 collected on dense outputs of block 0 give a different mask."""
    pruned_seq = make_llama()
    plan = {b.name: 0.7 for b in pruned_seq.blocks()}
    SequentialEngine(pruned_seq, WandaPruner(), plan).run(batches_for(pruned_seq))
    dense_stats = make_llama()
    second = list(dense_stats.blocks())[1]
    only_second = {b.name: 0.0 for b in dense_stats.blocks()} | {second.name: 0.7}
    SequentialEngine(dense_stats, WandaPruner(), only_second).run(batches_for(dense_stats))
    masks_differ = any(
        not torch.equal(a.weight == 0, b.weight == 0)
        for a, b in zip(list(pruned_seq.blocks())[1].matrices, second.matrices, strict=True)
    )
    assert masks_differ


def test_offload_gives_the_same_weights():
    a, b = make_llama(), make_llama()
    plan = {blk.name: 0.5 for blk in a.blocks()}
    SequentialEngine(a, WandaPruner(), plan).run(batches_for(a))
    SequentialEngine(b, WandaPruner(), plan, device="cpu", offload=True).run(batches_for(b))
    for x, y in zip(a.matrices(), b.matrices(), strict=True):
        assert torch.equal(x.weight, y.weight)


def test_engine_reports_and_verification():
    adapter = make_llama()
    nm = parse_nm("2:4")
    plan = {blk.name: 0.5 for blk in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan, nm).run(batches_for(adapter))
    assert len(reports) == sum(len(b.matrices) for b in adapter.blocks()) == 14
    summary = verify(adapter, plan, nm, reports)
    assert summary["overall"] == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in summary["per_matrix"].values())


def test_sparsegpt_inverts_each_distinct_hessian_once(monkeypatch):
    """q, k, v and gate, up share their Hessian, so a LLaMA block needs 4 inverses, not 7; the
    masks and weights are the ones a fresh inverse per matrix gives."""
    import ecoflap_exp.pruning.sparsegpt as sparsegpt

    inversions = []
    invert = sparsegpt.inverse_cholesky
    monkeypatch.setattr(sparsegpt, "inverse_cholesky", lambda H, p: inversions.append(H.shape) or invert(H, p))
    shared, fresh = make_llama(), make_llama()
    plan = {b.name: 0.5 for b in shared.blocks()}
    SequentialEngine(shared, SparseGPTPruner(blocksize=16), plan).run(batches_for(shared))
    assert len(inversions) == 4 * len(list(shared.blocks()))
    monkeypatch.setattr(sparsegpt.Hessian, "inverse", lambda self, p, damping: invert(self.H.clone(), p))
    SequentialEngine(fresh, SparseGPTPruner(blocksize=16), plan).run(batches_for(fresh))
    for a, b in zip(shared.matrices(), fresh.matrices(), strict=True):
        assert torch.equal(a.weight, b.weight), a.name


def tiny_gemma3(seed=0):
    """Gemma-3's text model, tiny: sliding-window (4 tokens) and global attention alternating, each with
    its own mask and its own rotary table (local base 10^4, global 10^6)."""
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=4, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"] * 2, rope_theta=1e6, rope_local_base_freq=1e4)
    torch.manual_seed(seed)
    return CausalLMAdapter.wrapping(transformers.Gemma3ForCausalLM(config).eval())


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
def test_engine_equals_the_full_forward_reference_where_blocks_differ(pruner):
    fast, slow = tiny_gemma3(), tiny_gemma3()
    plan = {b.name: 0.3 + 0.1 * i for i, b in enumerate(fast.blocks())}
    SequentialEngine(fast, pruner, plan).run(batches_for(fast))
    prune_by_full_forwards(slow, pruner, plan, batches_for(slow))
    assert_same_pruning(fast, slow)


class Qwen25VisionTower:
    """Qwen2.5-VL's ViT alone (tiny): windowed attention in blocks 0 and 2, full attention in 1 and 3
    (`fullatt_block_indexes`), each kind with its own cu_seqlens, over two images of 8 x 8 and 4 x 8 patches."""

    @staticmethod
    def make(seed=0):
        import transformers
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        from ecoflap_exp.models.adapter import ModelAdapter
        from ecoflap_exp.models.seam import Tower, blocks_of

        class Adapter(ModelAdapter):
            def __init__(self, model):
                self.model, self.name = model, "qwen2.5-vl vit"

            def all_towers(self):
                return [Tower("vision", blocks_of("blocks", self.model.blocks), root=self.model, reads=())]

            def collate(self, samples):
                raise NotImplementedError

            def forward(self, batch):
                return self.model(batch["pixels"], grid_thw=batch["grid"]).last_hidden_state

            def loss_terms(self, batch):
                raise NotImplementedError

            def save(self, path):
                raise NotImplementedError

        config = transformers.Qwen2_5_VLVisionConfig(
            depth=4, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1, 3], out_hidden_size=32, in_channels=3)
        torch.manual_seed(seed)
        return Adapter(Qwen2_5_VisionTransformerPretrainedModel._from_config(config).eval())

    @staticmethod
    def batches():
        g = torch.Generator().manual_seed(2)
        grid = torch.tensor([[1, 8, 8], [1, 4, 8]])
        return [{"pixels": torch.randn(96, 96, generator=g), "grid": grid} for _ in range(2)]


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
def test_engine_equals_the_reference_on_qwen25_vl_windowed_vision_blocks(pruner):
    from ecoflap_exp.walk import capture_arguments

    fast, slow = Qwen25VisionTower.make(), Qwen25VisionTower.make()
    (tower,) = fast.towers()
    captured = capture_arguments(fast, tower, Qwen25VisionTower.batches())[0]
    bounds = [inp.kwargs["cu_seqlens"].tolist() for inp in captured]
    assert bounds[0] == bounds[2] != bounds[1] == bounds[3] == [0, 64, 96]  # windows, then whole images
    plan = {b.name: 0.5 for b in fast.blocks()}
    SequentialEngine(fast, pruner, plan).run(Qwen25VisionTower.batches())
    prune_by_full_forwards(slow, pruner, plan, Qwen25VisionTower.batches())
    assert_same_pruning(fast, slow)


def test_a_tower_whose_blocks_cannot_be_captured_is_refused_with_one_message():
    from ecoflap_exp.errors import UserError
    from ecoflap_exp.models.seam import Tower

    adapter = make_llama()
    (tower,) = adapter.towers()
    reversed_tower = Tower("decoder", list(reversed(tower.blocks)))
    adapter.towers = lambda: [reversed_tower]
    with pytest.raises(UserError, match="ran model.layers.0 after 0 of the blocks before it"):
        SequentialEngine(adapter, WandaPruner(), {b.name: 0.5 for b in tower.blocks}).run(batches_for(adapter))
    stray = Tower("decoder", [tower.blocks[0], type(tower.blocks[0])("stray", torch.nn.Identity(), [])])
    adapter.towers = lambda: [stray]
    with pytest.raises(UserError, match=r"never reached stray \(block 1 of 2\)"):
        SequentialEngine(adapter, WandaPruner(), {"model.layers.0": 0.5, "stray": 0.5}).run(batches_for(adapter))
    assert "forward" not in vars(tower.blocks[0].module)  # the capture's pass-through is undone


