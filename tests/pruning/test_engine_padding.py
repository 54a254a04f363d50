"""Pads never enter calibration statistics. The official Wanda, SparseGPT and first-order passes run
BLIP-2 at batch size 1, so no padding reaches them; here captions of different lengths share a
batch, padded to the longest, and the towers' token masks keep the pad positions out. So one batch
of 4 gives the statistics and the pruned weights of the same 4 captions one at a time."""

import random

import pytest
import torch

from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import Hessian, SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.id_estimators import VectorStore
from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer, representation
from ecoflap_exp.walk import collect_stats, walk_tower
from tests.models.test_blip2 import images, tiny

CAPTIONS = ["a cat", "two dogs in a park", "a plate of food on a table", "an old stone house by a lake"]


def calibration(adapter, batch_size):
    adapter.split_rng = random.Random(7)  # the same prefix/target cuts for both batchings
    pairs = list(zip(images(4), CAPTIONS, strict=True))
    return [adapter.collate(pairs[i : i + batch_size]) for i in range(0, 4, batch_size)]


@torch.no_grad()
def statistics(adapter, batches, pruner):
    """Every language-model matrix's input statistics on the dense model, block by block."""
    out = {}
    for tower in adapter.towers():
        if tower.name == "vision":
            continue
        for block, inputs in walk_tower(adapter, tower, batches, adapter.device):
            for m, st in collect_stats(tower, block, inputs, pruner.new_stats, adapter.device).items():
                out[m.name] = (st.H if isinstance(st, Hessian) else st.sq_norms).clone()
    return out


def store_distances(store):
    """Every pair's distance in a VectorStore, measured exactly (its own pair measurement)."""
    i, j = torch.meshgrid(torch.arange(store.points), torch.arange(store.points), indexing="ij")
    return store.pair_sq_distances(i.flatten(), j.flatten()).view(store.points, -1).sqrt()


def assert_close_relative(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_padded_batch_gives_the_statistics_of_single_samples(kind):
    adapter = tiny(kind)
    together, alone = calibration(adapter, 4), calibration(adapter, 1)
    text = together[0]["attention_mask"]
    assert len(set(text.sum(1).tolist())) == 4 and not bool(text.all())  # lengths differ: pads are there
    assert all(bool(b["attention_mask"].all()) for b in alone)  # one caption: no pads
    for pruner in (WandaPruner(), SparseGPTPruner()):
        batched, single = statistics(adapter, together, pruner), statistics(adapter, alone, pruner)
        assert batched.keys() == single.keys() and len(batched) == (36 if kind == "t5" else 12)
        for name in batched:
            assert_close_relative(batched[name], single[name])


#: SparseGPT's weights go through H^-1, which amplifies the fp32 rounding of summing the same
#: tokens in another order: the vision tower, which has no padding at all, differs by 3.4e-5 of its
#: largest weight between one batch of 4 and four of 1 (Wanda's weights: bit-identical)
SPARSEGPT_RTOL = 1e-4


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)], ids=["wanda", "sparsegpt"])
@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_padded_batch_prunes_as_single_samples(kind, pruner):
    a, b = tiny(kind), tiny(kind)
    plan = {blk.name: 0.5 for blk in a.blocks()}
    SequentialEngine(a, pruner, plan).run(calibration(a, 4))
    SequentialEngine(b, pruner, plan).run(calibration(b, 1))
    for m, n in zip(a.matrices(), b.matrices(), strict=True):
        assert torch.equal(m.weight == 0, n.weight == 0), m.name
        if isinstance(pruner, WandaPruner):
            assert torch.equal(m.weight, n.weight), m.name
        else:
            assert_close_relative(m.weight, n.weight, SPARSEGPT_RTOL)


@torch.no_grad()
def test_intrinsic_dimension_representations_ignore_padding():
    """A sample's mean representation is over its real tokens only, and its flattened one is zero
    past them: the distances between samples are the same whether their batch pads them or not."""
    adapter = tiny("t5")
    for kind in ("mean", "flatten"):
        captured = {}
        for batching in (4, 1):
            distances = captured[batching] = []

            def keep(block, outputs, distances=distances, kind=kind):
                store = VectorStore(adapter.device)
                for o in outputs:
                    store.add(representation(o.hidden, kind, o.masks.get("hidden")))
                distances.append(store_distances(store))

            for tower in adapter.towers()[1:]:
                for _ in walk_tower(adapter, tower, calibration(adapter, batching), adapter.device, after=keep):
                    pass
        assert len(captured[4]) == 4 and captured[4][0].shape == (4, 4)
        for together, alone in zip(captured[4], captured[1], strict=True):
            assert_close_relative(together, alone)


@pytest.mark.parametrize("kind", ["t5", "opt"])
@torch.no_grad()
def test_per_matrix_id_distances_ignore_padding(kind):
    """Every matrix's output distances (the T5 decoder's cross-attention k, v over the encoder's
    tokens included) are the same whether the batch pads a caption or not."""
    adapter = tiny(kind)
    scorer = IntrinsicDimensionScorer(granularity="matrix")
    captured = {}
    for batching in (4, 1):
        distances = captured[batching] = {}
        for tower in adapter.towers()[1:]:
            for block, inputs in walk_tower(adapter, tower, calibration(adapter, batching), adapter.device):
                stores = {m.name: VectorStore(adapter.device) for m in block.matrices}
                scorer.matrix_stores(tower, block, inputs, stores)
                distances.update({name: store_distances(store) for name, store in stores.items()})
    assert captured[4].keys() == captured[1].keys() and len(captured[4]) == (36 if kind == "t5" else 12)
    assert any(".EncDecAttention.k" in name for name in captured[4]) == (kind == "t5")
    for name, together in captured[4].items():
        assert together.shape == (4, 4)
        assert_close_relative(together, captured[1][name])
