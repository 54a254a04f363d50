"""Towers whose outputs a perturbation or a pruned tower cannot change are computed once per batch
(ecoflap_exp.tower_outputs): the estimates and masks equal the uncached path's, bit for bit, and
the blocks of those towers run only as often as the bound allows."""

import logging

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer
from ecoflap_exp.tower_outputs import TowerOutputs, carry
from scripts.instrumentation import count_block_forwards
from tests.models.test_blip2 import batches as blip2_batches
from tests.models.test_blip2 import tiny
from tests.models.test_open_clip import batches as clip_batches
from tests.models.test_open_clip import tiny_clip


def zeroth(adapter, batches, reuse_towers, outputs=None):
    scorer = ZerothOrderScorer(num_samples=8, granularity="matrix", reuse_towers=reuse_towers)
    with count_block_forwards(adapter) as counter:
        scores = scorer.scores(adapter, batches, outputs=outputs)
    return scores, counter.by_tower


def own_walk_forwards(tower, batches):
    """Block forwards of a tower's own zeroth-order walk with prefix reuse: per matrix of block i,
    two losses per batch, each running blocks i..end; plus one re-run of every block per batch."""
    blocks = len(tower.blocks)
    return sum(2 * len(batches) * len(b.matrices) * (blocks - i) for i, b in enumerate(tower.blocks)) + \
        blocks * len(batches)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_blip2_zeroth_estimates_equal_and_earlier_towers_run_once_per_batch(kind, dtype):
    """vision -> qformer -> (encoder ->) decoder: a tower's blocks run in its own walk, in every
    perturbed loss of an earlier tower (they read it), and once per batch when the next tower's
    inputs are captured; never while a later tower is perturbed."""
    adapter = tiny(kind, precision=dtype)
    batches = blip2_batches(adapter)
    cached, cached_counts = zeroth(adapter, batches, True)
    plain, plain_counts = zeroth(adapter, batches, False)
    assert cached == plain  # bit for bit: a served output is the one the tower computes
    towers, B = adapter.towers(), len(batches)
    losses = [2 * B * sum(len(b.matrices) for b in t.blocks) for t in towers]  # perturbed losses per tower
    for i, tower in enumerate(towers):
        blocks = len(tower.blocks)
        captured = blocks * B if i < len(towers) - 1 else 0
        assert cached_counts[tower.name] == own_walk_forwards(tower, batches) + sum(losses[:i]) * blocks + captured
        # uncached, every other tower's perturbed losses and every later capture run it in full
        others = sum(losses) - losses[i]
        assert plain_counts[tower.name] == own_walk_forwards(tower, batches) + others * blocks + (
            len(towers) - 1 - i) * blocks * B
    vision = towers[0].name
    assert plain_counts[vision] > 2 * cached_counts[vision]


def test_clip_zeroth_serves_the_other_tower_and_estimates_equal():
    """The towers meet only in the loss: while the text is perturbed the image tower runs not at
    all (and the other way round) beyond the once per batch that stores it."""
    adapter = tiny_clip()
    batches = clip_batches(adapter)
    cached, counts = zeroth(adapter, batches, True)
    plain, plain_counts = zeroth(adapter, batches, False)
    assert cached == plain
    vision, text = adapter.towers()
    assert counts["vision"] == own_walk_forwards(vision, batches) + len(vision.blocks) * len(batches)
    assert counts["text"] == own_walk_forwards(text, batches) + len(text.blocks) * len(batches)
    assert plain_counts["vision"] > 2 * counts["vision"]


@pytest.mark.parametrize("make", [lambda: tiny("t5"), lambda: tiny("opt"), tiny_clip],
                         ids=["blip2_t5", "blip2_opt", "clip"])
def test_engine_masks_equal_the_uncached_engine(make):
    """Scores then pruning in one scope (as a run does): the capture of each tower serves the pruned
    towers it reads and, for CLIP, the image tower's older output beside the text; the weights
    equal those of a scope that stores nothing."""
    results, counts = [], []
    for budget in (4.0, 0.0):
        adapter = make()
        batches = clip_batches(adapter) if make is tiny_clip else blip2_batches(adapter)
        with TowerOutputs(adapter, budget) as outputs, count_block_forwards(adapter) as counter:
            ZerothOrderScorer(num_samples=8).scores(adapter, batches, outputs=outputs)
            plan = {b.name: 0.5 for b in adapter.blocks()}
            SequentialEngine(adapter, WandaPruner(), plan, outputs=outputs).run(batches)
        results.append([m.weight.clone() for m in adapter.matrices()])
        counts.append(counter.real)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert counts[0] < counts[1]


def test_a_full_budget_recomputes_and_says_so(caplog):
    adapter = tiny("t5")
    batches = blip2_batches(adapter)
    with caplog.at_level(logging.INFO), TowerOutputs(adapter, 1e-9) as outputs:
        scores = ZerothOrderScorer(num_samples=8).scores(adapter, batches, outputs=outputs)
        assert outputs.stored == {} and outputs.full and "cache_gb" in caplog.text
    assert scores == ZerothOrderScorer(num_samples=8, reuse_towers=False).scores(adapter, batches)


def test_a_root_that_holds_another_towers_blocks_reads_it():
    """Declarations are not trusted beyond what the modules show: an encoder root declared as the
    whole language model holds the decoder's blocks, so it is never served while they change."""
    adapter = tiny("t5")
    with TowerOutputs(adapter) as honest:
        assert not honest.reads("encoder", "decoder") and "encoder" in honest.unchanged_by("decoder")

    class WholeLanguageModelRoot(type(adapter)):
        def all_towers(self):
            towers = super().all_towers()
            towers[2].root = self.model.language_model
            return towers

    adapter.__class__ = WholeLanguageModelRoot
    with TowerOutputs(adapter) as outputs:
        assert outputs.reads("encoder", "decoder") and "encoder" not in outputs.unchanged_by("decoder")


def test_outputs_are_served_only_by_the_object_handed_over():
    """No store is global: while one is open for an adapter, a scorer and an engine handed none
    compute every tower (and store nothing in it); two adapters' stores, filled from the same
    batches, stay apart (the image tower of the second, with other weights, is never served the
    first's outputs)."""
    adapter = tiny_clip()
    batches = clip_batches(adapter)
    alone = zeroth(adapter, batches, False)
    with TowerOutputs(adapter) as outputs:
        assert zeroth(adapter, batches, False) == alone
        SequentialEngine(adapter, WandaPruner(), {b.name: 0.5 for b in adapter.blocks()}).run(batches)
        assert outputs.stored == {}

    first, second = tiny_clip(), tiny_clip()
    with torch.no_grad():
        for block in second.towers()[0].blocks:
            for m in block.matrices:
                m.weight.mul_(0.5)
    second_alone, _ = zeroth(second, batches, False)
    with TowerOutputs(first) as first_outputs, TowerOutputs(second) as second_outputs:
        zeroth(first, batches, True, first_outputs)
        assert first_outputs.stored and second_outputs.stored == {}
        second_served, counts = zeroth(second, batches, True, second_outputs)
        assert second_outputs.stored
    assert second_served == second_alone
    vision, text = second.towers()
    assert counts["vision"] == own_walk_forwards(vision, batches) + len(vision.blocks) * len(batches)


def test_leaving_drops_what_was_stored():
    adapter = tiny_clip()
    batches = clip_batches(adapter)
    with TowerOutputs(adapter) as outputs:
        zeroth(adapter, batches, True, outputs)
        assert outputs.stored and outputs.bytes > 0
    assert outputs.stored == {} and outputs.bytes == 0


def test_stored_outputs_are_copies_of_their_own_type():
    out = BaseModelOutput(last_hidden_state=torch.ones(2, 3), hidden_states=(torch.zeros(1),))
    copy = carry(out, torch.device("cpu"))
    assert type(copy) is BaseModelOutput and torch.equal(copy.last_hidden_state, out.last_hidden_state)
    copy.last_hidden_state.add_(1)  # a consumer that writes in place cannot change what is stored
    assert float(out.last_hidden_state.sum()) == 6
