"""The pruning core: one target and one set of method checks, the same message from the command
line (preflight) and the API; the one-shot pass's dense point and its score memo."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from ecoflap_exp import prune
from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.api import CONFIG_DIR
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.oneshot import Calibration, Method, Scored, Target, prune_with
from ecoflap_exp.plugins import Plugins, build
from ecoflap_exp.preflight import preflight, validate
from tests.test_api import tiny_llama, token_samples


@pytest.mark.parametrize(("args", "expected"), [
    ((None, None, None, 0.1), Target(0.5, 0.6)),  # the defaults: 0.5, ECoFLaP's p + 0.1
    ((0.95, None, None, 0.1), Target(0.95, 1.0)),  # the ceiling is capped at 1
    ((0.3, None, 0.8, 0.1), Target(0.3, 0.8)),
    ((None, "2:4", None, 0.1), Target(0.5, 0.6, Target.of(None, "2:4").nm)),  # N:M fixes the sparsity
    ((0.5, "4:8", None, 0.2), Target(0.5, 0.7, Target.of(None, "4:8").nm)),
])
def test_the_target_by_hand(args, expected):
    assert Target.of(*args) == expected


@pytest.mark.parametrize(("args", "message"), [
    ((0.6, None, 0.5, 0.1), r"max_sparsity=0.5 must lie in \[sparsity=0.6, 1\]"),
    ((0.3, "2:4", None, 0.1), "nm=2:4 fixes the sparsity at 0.5, but sparsity=0.3"),
    ((1.0, None, None, 0.1), r"sparsity=1.0 is outside \[0, 1\)"),
    ((None, "4:2", None, 0.1), "N:M keeps N of every M weights, so it needs 0 < N < M"),
])
def test_a_bad_target_is_one_message(args, message):
    with pytest.raises(UserError, match=message):
        Target.of(*args)


def command_line(tmp_path, *overrides):
    """validate + preflight of `ecoflap model=llama_tiny ...`: the command line's checks, nothing loaded."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", ["model=llama_tiny", "calib=shipped_text", "suite=none", f"paths.root={tmp_path}",
                                 "calib.batch_size=4", "device=cpu", *overrides])
    preflight(cfg, validate(cfg), Plugins.build(cfg))


#: (command-line overrides, API arguments, the message both end in): rules the API skipped before
#: the core held them (issue 28 item 1)
SHARED_RULES = [
    (["sparsity=0.6", "max_sparsity=0.5"], dict(sparsity=0.6, max_sparsity=0.5),
     r"max_sparsity=0.5 must lie in \[sparsity=0.6, 1\]"),
    (["scorer=zeroth", "allocation=global", "allocation.use_id=false"], dict(scorer="zeroth", allocation="global",
                                                                            overrides=["allocation.use_id=false"]),
     "allocation=global-wanda plans without block scores"),
    (["scorer=zeroth", "scorer.num_samples=6"], dict(scorer="zeroth", batch_size=4,
                                                     overrides=["scorer.num_samples=6"]),
     r"scorer.num_samples=6 is not a whole number of calibration batches \(calib.batch_size=4\)"),
]


@pytest.mark.parametrize(("overrides", "kwargs", "message"), SHARED_RULES)
def test_the_command_line_and_the_api_refuse_alike(tmp_path, overrides, kwargs, message):
    with pytest.raises(UserError, match=message):
        command_line(tmp_path, *overrides)
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=message):
        prune(model, token_samples(), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def tiny_adapter():
    return CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", arch_overrides={"num_hidden_layers": 2})


def method(scorer="zeroth"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", [f"scorer={scorer}", "scorer.num_samples=8"] if scorer == "zeroth" else [])
    return Method(build(cfg.scorer), build(cfg.allocation), build(cfg.pruner))


def test_a_dense_target_prunes_nothing_and_verifies_the_weights_as_they_are():
    adapter = tiny_adapter()
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    done = prune_with(adapter, Calibration([]), method(), Target(0.0, 0.1))
    assert done.plan == {} and done.reports == [] and done.scored.scores == {}
    assert done.achieved["overall"] == 0.0 and done.achieved["prunable_params"] == sum(
        m.numel for m in adapter.matrices())
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())


class Memo:
    def __init__(self, held=None):
        self.held, self.saved = held, []

    def load(self):
        return self.held

    def save(self, scored):
        self.saved.append(scored)


def test_scores_come_from_the_memo_when_it_holds_them_and_go_into_it_when_computed():
    adapter = tiny_adapter()
    batches = [adapter.collate(token_samples(4, seed=s)) for s in range(2)]
    blocks = [b.name for b in adapter.blocks()]
    fresh = Memo()
    computed = prune_with(tiny_adapter(), Calibration(batches), method(), Target(0.5, 0.6), memo=fresh)
    assert not computed.reused and fresh.saved[0].scores == computed.scored.scores
    assert set(computed.plan) == set(blocks)
    held = Scored({blocks[0]: 1.0, blocks[1]: 9.0}, {"from": "memo"}, None)  # block 0 far less important
    reused = prune_with(adapter, Calibration(batches), method(), Target(0.5, 0.6), memo=Memo(held))
    assert reused.reused and reused.scored is held
    assert reused.plan == method().allocation.plan(held.scores, Groups.of(adapter), 0.5, 0.6)
    assert reused.plan[blocks[0]] > 0.5 > reused.plan[blocks[1]]  # the held scores, not the computed ones
    uniform = Memo(held)
    plain = prune_with(tiny_adapter(), Calibration(batches), method("uniform"), Target(0.5, 0.6), memo=uniform)
    assert not plain.reused and uniform.saved == [] and set(plain.plan.values()) == {0.5}  # nothing worth keeping
