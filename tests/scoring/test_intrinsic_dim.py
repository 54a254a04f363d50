"""The intrinsic-dimension scorer: per-matrix and per-block IDs of the hooked outputs, its own sample
count, its vector store on disk."""

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.scoring import id_estimators as estimators
from ecoflap_exp.scoring import intrinsic_dim as ID


def llama(blocks=4, seed=0):
    return CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=seed,
                           arch_overrides={"num_hidden_layers": blocks})


def batches_for(adapter, samples=16, batch=4, seed=0):
    ids = torch.randint(3, 259, (samples, 32), generator=torch.Generator().manual_seed(seed))
    return [adapter.collate(list(ids[i : i + batch])) for i in range(0, samples, batch)]


# ---- intrinsic dimension ---------------------------------------------------------------------


def test_scorer_store_dir_gives_the_same_ids_and_cleans_up(tmp_path):
    adapter = llama(blocks=2)
    batches = batches_for(adapter, samples=24, batch=8)
    in_memory = ID.IntrinsicDimensionScorer(granularity="matrix")
    on_disk = ID.IntrinsicDimensionScorer(granularity="matrix", store_dir=str(tmp_path / "ids"))
    assert in_memory.scores(adapter, batches) == on_disk.scores(adapter, batches)
    assert list((tmp_path / "ids").iterdir()) == []


def hooked_outputs(adapter, batches, modules):
    """Each module's output over all samples from plain full-model forwards, one row per sample."""
    outputs = {name: [] for name in modules}
    handles = [adapter.model.get_submodule(path).register_forward_hook(
        lambda _m, _a, out, name=name: outputs[name].append(out.float().reshape(out.shape[0], -1)))
        for name, path in modules.items()]
    with torch.no_grad():
        for batch in batches:
            adapter.forward(batch)
    for h in handles:
        h.remove()
    return {name: torch.cat(rows) for name, rows in outputs.items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_per_matrix_id_is_twonn_of_each_matrix_output(dtype):
    adapter = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", dtype=dtype,
                              arch_overrides={"num_hidden_layers": 3})
    batches = batches_for(adapter, samples=64, batch=8)
    scorer = ID.IntrinsicDimensionScorer(granularity="matrix")
    scores = scorer.scores(adapter, batches)
    ids = scorer.info["intrinsic_dim"]
    block = adapter.towers()[0].blocks[1]
    by_hand = hooked_outputs(adapter, batches, {m.name: m.name for m in block.matrices})
    assert len(by_hand) == 7 and len(ids) == 21
    for m in block.matrices:  # the walk's block inputs are the full forward's: the same outputs, the same ID
        assert ids[m.name] == pytest.approx(estimators.twonn(by_hand[m.name]), rel=1e-9)
        assert scores[m.name] == pytest.approx(ids[m.name] * m.numel, rel=1e-12)
    assert len({round(v, 6) for v in ids.values()}) == 21  # each matrix its own ID, not its block's
    assert scorer.info["tower_mean_id"] == {"decoder": pytest.approx(sum(ids.values()) / 21)}


def test_block_id_is_twonn_of_the_block_output():
    adapter = llama(blocks=3)
    batches = batches_for(adapter, samples=48, batch=8)
    scorer = ID.IntrinsicDimensionScorer()
    scores = scorer.scores(adapter, batches)
    blocks = adapter.towers()[0].blocks
    assert list(scores) == [b.name for b in blocks]
    outputs = {}
    handles = [b.module.register_forward_hook(lambda _m, _a, out, name=b.name: outputs.setdefault(name, []).append(
        (out[0] if isinstance(out, tuple) else out).reshape(8, -1))) for b in blocks]
    with torch.no_grad():
        for batch in batches:
            adapter.forward(batch)
    for h in handles:
        h.remove()
    for b in blocks:
        expected = estimators.twonn(torch.cat(outputs[b.name]))
        assert scorer.info["intrinsic_dim"][b.name] == pytest.approx(expected, rel=1e-9)
        assert scores[b.name] == pytest.approx(scorer.info["intrinsic_dim"][b.name] * b.numel)
    mean = ID.IntrinsicDimensionScorer(representation="mean").scores(adapter, batches)
    assert mean != scores
    with pytest.raises(UserError, match="scorer.representation"):
        ID.IntrinsicDimensionScorer(representation="pooled")


def test_id_uses_its_own_sample_count():
    adapter = llama(blocks=2)
    batches = batches_for(adapter, samples=48, batch=8)
    scorer = ID.IntrinsicDimensionScorer(num_samples=24)
    assert scorer.samples_needed == 24
    scorer.scores(adapter, batches)
    alone = ID.IntrinsicDimensionScorer()
    alone.scores(adapter, batches[:3])
    assert scorer.info["intrinsic_dim"] == alone.info["intrinsic_dim"]
    with pytest.raises(UserError, match="scorer.num_samples"):
        ID.IntrinsicDimensionScorer(num_samples=2)


# ---- zeroth-order ----------------------------------------------------------------------------


# ---- first-order -----------------------------------------------------------------------------


# ---- combinations, OWL, allocations ----------------------------------------------------------
