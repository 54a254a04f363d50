"""adapter: the towers a run prunes, the calibration loss (fp32 mean of the terms' cross-entropies),
weights handed to another model, and the share of zeros."""

import math

import pytest
import torch
import torch.nn.functional as F

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE, LossTerm, contrastive_terms
from ecoflap_exp.models.causal_lm import CausalLMAdapter


def test_prune_towers_must_name_the_models_own_towers():
    assert [t.name for t in CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes",
                                            prune_towers=["decoder"]).towers()] == ["decoder"]
    with pytest.raises(UserError, match=r"model.prune_towers=\['vision'\] must name some of CausalLMAdapter's towers: "
                                        r"decoder"):
        CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", prune_towers=["vision"]).towers()


def test_the_loss_is_the_mean_of_its_terms_skipping_ignored_targets(tiny_llama, monkeypatch):
    # term 1: uniform logits over 4 classes -> ln 4 whatever the target; the ignored position counts for nothing
    uniform = LossTerm(torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.tensor([[2, IGNORE]]))
    # term 2: the target's logit ln 3 above three zeros: -log(3 / (3 + 3)) = ln 2
    sure = LossTerm(torch.tensor([[math.log(3), 0.0, 0.0, 0.0]]), torch.tensor([0]))
    monkeypatch.setattr(tiny_llama, "loss_terms", lambda batch: [uniform, sure])
    loss = tiny_llama.loss({})
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-6)


def test_contrastive_terms_are_both_directions_against_the_diagonal():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    image, text = contrastive_terms(logits)
    assert torch.equal(image.targets, torch.tensor([0, 1])) and torch.equal(text.logits, logits.t())
    # text -> image: rows (2, 1) and (0, 3) of the transpose, targets 0 and 1
    assert F.cross_entropy(text.logits, text.targets).item() == pytest.approx(
        -(math.log(math.exp(2) / (math.exp(2) + math.exp(1))) + math.log(math.exp(3) / (1 + math.exp(3)))) / 2)


def test_weights_are_copied_by_prefix_and_a_foreign_one_is_refused(tiny_llama):
    other = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=1)
    state = tiny_llama.model.state_dict()
    prefix = "model.layers.1."
    copied = other.load_weights(state, [prefix], "the pruned model")
    assert copied == sum(k.startswith(prefix) for k in state) > 0
    mine = other.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in state.items() if k.startswith(prefix))
    assert not torch.equal(mine["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(UserError, match="weight vision.w of the pruned model has no counterpart in CausalLMAdapter"):
        other.load_weights({"vision.w": torch.zeros(1)}, ["vision."], "the pruned model")
    with pytest.raises(UserError, match="the pruned model has no weights under text.; nothing to load"):
        other.load_weights(state, ["text."], "the pruned model")


def test_the_zero_share_is_over_the_prunable_matrices(tiny_llama):
    matrices = list(tiny_llama.matrices())
    total = sum(m.numel for m in matrices)
    assert tiny_llama.zero_share() == 0.0
    matrices[0].weight.zero_()
    tiny_llama.model.lm_head.weight.data.zero_()  # not a prunable matrix: not counted
    assert tiny_llama.zero_share() == pytest.approx(matrices[0].numel / total)
