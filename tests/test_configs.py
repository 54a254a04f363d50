"""Every option of every config group composes, resolves, and names only arguments its `_target_`
takes (a key nothing reads is a typo waiting to be silently ignored); every tiny model builds; every
model brings a calib and suite it runs with (lightning-hydra-template's and torchtune's config tests)."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from ecoflap_exp.errors import UserError
from ecoflap_exp.plugins import build

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GROUPS = ("model", "calib", "data", "scorer", "pruner", "allocation", "suite", "logger", "finetune", "experiment")


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


#: options that read another group's choice (suite=coop evaluates the calibration's CoOp dataset)
PARTNERS = {("suite", "coop"): ["calib=coop_train"]}


def overrides_for(group, option):
    if (group, option) in PARTNERS:
        return [f"{group}={option}", *PARTNERS[group, option]]
    if group == "eval":
        return [f"+eval@evals.probe={option}"]
    if group == "experiment/method":
        return [f"+experiment/method={option}"]
    if group == "train":
        return ["finetune=masked", f"+train@finetune.train={option}"]
    return [f"{group}={option}"]


CASES = [(g, o) for g in (*GROUPS, "eval", "experiment/method", "train") for o in options(g)]


def targets(node, path="cfg"):
    """(dotted path, node) of every node with a `_target_` inside `node`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from targets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targets(value, f"{path}[{i}]")


def compose_resolved(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", ["device=cpu", *overrides])
    return cfg, OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_binds_to_its_target(group, option):
    _, resolved = compose_resolved(overrides_for(group, option))
    found = list(targets(resolved))
    assert found
    for path, node in found:
        target = get_class(node["_target_"])
        kwargs = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
        try:
            inspect.signature(target).bind_partial(**kwargs)
        except TypeError as err:
            raise AssertionError(f"{group}={option}: {path} ({node['_target_']}): {err}") from None


@pytest.mark.parametrize("model", [m for m in options("model") if m.endswith("_tiny")])
def test_every_tiny_model_builds_with_its_own_calib_and_suite(model):
    cfg, resolved = compose_resolved([f"model={model}"])
    adapter = build(cfg.model)
    assert adapter.name == model
    calib = build(cfg.calib)
    assert calib.kind in adapter.sample_kinds  # the model's default calibration fits it
    for name, ev in cfg.evals.items():
        assert build(ev).missing(type(adapter))[1] == [], name  # and so does its default suite


@pytest.mark.parametrize("model", options("model"))
def test_every_model_brings_a_calib_and_suite_that_fit_it(model):
    """Checked on the adapter class (full-size weights cannot load here): `python run.py model=<any>`
    composes a calibration of a kind the model takes and evals whose capabilities it has."""
    cfg, _ = compose_resolved([f"model={model}"])
    assert cfg.model.name == model
    adapter = get_class(cfg.model._target_)
    assert get_class(cfg.calib._target_).kind in adapter.sample_kinds
    for name, ev in cfg.evals.items():
        try:
            missing = build(ev).missing(adapter)[1]
        except UserError:  # an eval that checks its files when built: its class's needs
            missing = [n for n in get_class(ev._target_).needs if not issubclass(adapter, n)]
        assert missing == [], name


def test_a_model_brings_its_defaults_and_the_command_line_still_wins():
    llama, _ = compose_resolved(["model=llama_tiny"])
    assert llama.calib._target_.endswith("TextCalibration") and list(llama.evals) == ["text"]
    assert llama.data.seqlen == 128 and llama.calib.seqlen == 128
    blip2, _ = compose_resolved(["model=blip2_t5"])
    assert blip2.calib.annotations.endswith("cc3m/cc3m.tsv") and set(blip2.evals) == {
        "vqav2", "okvqa", "gqa", "nocaps", "flickr30k"}
    assert blip2.calib.augment == "train"
    chosen, _ = compose_resolved(["model=llama_tiny", "calib=c4", "suite=none"])
    assert chosen.calib.source.endswith("c4-train.00000-of-01024.json.gz") and not chosen.evals
    # a companion model inside a suite never changes the run's own choices
    table1, _ = compose_resolved(["experiment=table1_blip2", "model@evals.nocaps.companion=blip2_t5_tiny"])
    assert table1.calib.annotations.endswith("cc3m/cc3m.tsv") and "vqav2" in table1.evals
