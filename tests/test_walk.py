"""walk: a tower's block inputs captured (through the tower's own split, each block's own arguments,
a patched forward given back), moved whole, and statistics shared by matrices that read one input."""

import torch

from ecoflap_exp.models.seam import BlockInput
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.walk import capture_inputs, collect_stats, move
from tests.pruning.test_engine import batches_for, make_llama, tiny_gemma3


def test_matrices_reading_the_same_input_share_statistics():
    adapter = make_llama()
    tower = adapter.towers()[0]
    block = tower.blocks[0]
    inputs = capture_inputs(adapter, tower, batches_for(adapter))
    stats = collect_stats(tower, block, inputs, SparseGPTPruner().new_stats, adapter.device)
    by_name = {m.name.rsplit(".", 1)[-1]: stats[m] for m in block.matrices}
    assert by_name["q_proj"] is by_name["k_proj"] is by_name["v_proj"]
    assert by_name["gate_proj"] is by_name["up_proj"]
    assert len({id(s) for s in stats.values()}) == 4  # qkv, o, gate/up, down
    assert by_name["q_proj"].samples == 8  # every sample counted once, not three times


def test_capture_uses_the_towers_own_input_split():
    """A tower that splits its blocks' arguments its own way is asked during capture too."""
    adapter = make_llama()
    (tower,) = adapter.towers()
    seen = []

    class Recording(type(tower)):
        def split_input(self, args, kwargs):
            seen.append(len(args) + len(kwargs))
            return super().split_input(args, kwargs)

    tower.__class__ = Recording
    inputs = capture_inputs(adapter, tower, batches_for(adapter))
    assert len(seen) == len(inputs) == 2


def test_block_inputs_move_whole():
    inp = BlockInput(torch.ones(2, 3, 4), (torch.zeros(1),), {"position_embeddings": (torch.ones(1), torch.ones(1))},
                     {"hidden": torch.ones(2, 3, dtype=torch.bool)})
    moved = move(inp, torch.device("meta"))
    tensors = [moved.hidden, *moved.args, *moved.kwargs["position_embeddings"], *moved.masks.values()]
    assert isinstance(moved, BlockInput) and all(t.device.type == "meta" for t in tensors)


def test_each_block_gets_the_arguments_the_models_forward_hands_it():
    """Gemma-3's global blocks get the global mask and rotary table, not block 0's sliding ones."""
    from ecoflap_exp.walk import capture_arguments

    adapter = tiny_gemma3()
    (tower,) = adapter.towers()
    batches = batches_for(adapter)
    seen = {}
    hooks = [b.module.register_forward_pre_hook(lambda m, a, kw, i=i: seen.update({i: kw}) and None, with_kwargs=True)
             for i, b in enumerate(tower.blocks)]
    with torch.no_grad():
        adapter.forward(batches[0])
    for h in hooks:
        h.remove()
    captured = capture_arguments(adapter, tower, batches)[0]
    for i, inp in enumerate(captured):
        for key in ("attention_mask", "position_embeddings"):
            expected, got = seen[i][key], inp.kwargs[key]
            if expected is None:
                assert got is None, (i, key)
            else:
                assert all(torch.equal(a, b) for a, b in zip(expected if isinstance(expected, tuple) else (expected,),
                                                                got if isinstance(got, tuple) else (got,), strict=True))
    assert not torch.equal(captured[0].kwargs["position_embeddings"][0], captured[1].kwargs["position_embeddings"][0])


def test_capture_restores_a_forward_patched_before_it():
    """A block whose forward another tool patched on the instance gets that patch back, not none."""
    from ecoflap_exp.walk import capture_arguments

    adapter = make_llama()
    (tower,) = adapter.towers()
    block = tower.blocks[0].module
    own = block.forward
    block.forward = lambda *args, **kwargs: own(*args, **kwargs)
    patched = vars(block)["forward"]
    captured = capture_arguments(adapter, tower, batches_for(adapter))
    assert vars(block)["forward"] is patched and len(captured[0]) == len(tower.blocks)
