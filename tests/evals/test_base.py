"""evals.base: an evaluation run on a companion model (the pruned towers transferred into it, an
unpruned model's left as released), and a suite's metrics named and checked."""

import math
from functools import partial

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation, OnCompanion, evaluate_suite
from ecoflap_exp.models.blip2 import Blip2Adapter, Blip2ITMAdapter
from ecoflap_exp.models.capabilities import ImageTextMatching
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from tests.models.test_blip2 import CAPTIONS, images


class CompanionProbe(Evaluation):
    """Reports what the model it runs on holds: its class, its ViT's and Q-Former's state."""

    needs = (ImageTextMatching,)

    def evaluate(self, adapter):
        vision = [m.weight for m in adapter.matrices()]
        return {"is_itm": float(isinstance(adapter, Blip2ITMAdapter)),
                "vision_zeros": sum(int((w == 0).sum()) for w in vision) / sum(w.numel() for w in vision),
                "qformer_sum": float(sum(p.detach().double().sum() for p in adapter.model.qformer.parameters()))}


def test_companion_receives_the_pruned_towers_and_is_checked_before_pruning():
    pruned = Blip2Adapter(arch="blip2_t5_tiny", init="random", tokenizer="bytes")
    plan = {b.name: 0.5 for b in pruned.blocks()}
    pairs = list(zip(images(), CAPTIONS, strict=True))
    SequentialEngine(pruned, WandaPruner(), plan).run([pruned.collate(pairs[:4]), pruned.collate(pairs[4:])])
    companion = partial(Blip2ITMAdapter, arch="blip2_itm_tiny", init="random", tokenizer="bytes", seed=7)
    probe = OnCompanion(CompanionProbe(), companion, ["vision_model."])
    assert probe.missing(type(pruned)) == ("Blip2ITMAdapter", [])  # the companion class, not the pruned one
    metrics = probe.evaluate(pruned)
    untouched = companion()
    assert metrics == pytest.approx({"is_itm": 1.0, "vision_zeros": 0.5, "qformer_sum": CompanionProbe().evaluate(
        untouched)["qformer_sum"]})
    assert probe.info == {"companion": "transferred"}
    assert OnCompanion(CompanionProbe(), partial(Blip2Adapter, arch="blip2_t5_tiny"), []).missing(type(pruned)) == (
        "Blip2Adapter", ["ImageTextMatching (image_states, features_from_states, text_features, itm_scores)"])


class StateProbe(Evaluation):
    """Keeps the state of the model it runs on."""

    def evaluate(self, adapter):
        self.state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        return {}


@pytest.mark.parametrize("companion", [partial(Blip2ITMAdapter, arch="blip2_itm_tiny", init="random", tokenizer="bytes",
                                               seed=7),
                                       partial(Blip2Adapter, arch="blip2_t5_tiny", init="random", tokenizer="bytes",
                                               seed=7)], ids=["itm", "t5"])
def test_an_unpruned_model_leaves_the_companion_as_released(companion):
    """ECoFLaP's dense row scores each COCO-finetuned companion as released (its own fine-tuned ViT):
    nothing is copied from an unpruned model; a pruned one hands over the official key set."""
    dense = Blip2Adapter(arch="blip2_t5_tiny", init="random", tokenizer="bytes", seed=3)
    released = companion().model.state_dict()
    probe = StateProbe()
    on_companion = OnCompanion(probe, companion)
    on_companion.evaluate(dense)
    assert on_companion.info == {"companion": "released"}
    assert probe.state.keys() == released.keys()
    assert all(torch.equal(probe.state[k], released[k]) for k in released)
    plan = {b.name: 0.5 for b in dense.blocks()}
    pairs = list(zip(images(), CAPTIONS, strict=True))
    SequentialEngine(dense, WandaPruner(), plan).run([dense.collate(pairs[:4])])
    on_companion.evaluate(dense)
    assert on_companion.info == {"companion": "transferred"}
    vit = "vision_model.encoder.layers.0.self_attn.qkv.weight"
    assert torch.equal(probe.state[vit], dense.model.state_dict()[vit])
    assert not torch.equal(probe.state[vit], released[vit])
    # pruned is judged on the towers the run prunes, as its achieved sparsity: the ViT alone at 3% is pruned
    vision_only = Blip2Adapter(arch="blip2_t5_tiny", init="random", tokenizer="bytes", seed=3, prune_towers=["vision"])
    SequentialEngine(vision_only, WandaPruner(), {b.name: 0.03 for b in vision_only.blocks()}).run(
        [vision_only.collate(pairs[:4])])
    assert vision_only.zero_share() == pytest.approx(0.03, abs=1e-3)
    on_companion.evaluate(vision_only)
    assert on_companion.info == {"companion": "transferred"}


class Fixed(Evaluation):
    def __init__(self, metrics, name=""):
        self.metrics, self.name = metrics, name

    def evaluate(self, adapter):
        return self.metrics


def test_a_suites_metrics_are_named_by_eval_and_a_non_finite_one_is_refused():
    metrics, info = evaluate_suite({"text": Fixed({"ppl": 12.5}), "probe": Fixed({"top1": 50.0}, name="imagenet")},
                                   adapter=None)
    assert metrics == {"text/ppl": 12.5, "imagenet/top1": 50.0} and info == {}
    with pytest.raises(UserError, match=r"non-finite metrics \{'text/ppl': nan\}"):
        evaluate_suite({"text": Fixed({"ppl": math.nan}), "probe": Fixed({"top1": 50.0})}, adapter=None)
