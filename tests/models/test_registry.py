"""Model families are found, not listed: every adapter a shipped config names is discovered, the
command line imports none of them at start-up, and an already-loaded model is claimed by exactly the
one family that wraps it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml

import ecoflap_exp
from ecoflap_exp.errors import UserError
from ecoflap_exp.models import registry
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.models.loading import load_transformers_model
from ecoflap_exp.models.open_clip import OpenCLIPAdapter, register_shipped_configs
from ecoflap_exp.models.vit import HFViTAdapter, TimmViTAdapter

CONFIGS = Path(ecoflap_exp.__file__).parent / "configs"


def test_every_adapter_a_model_config_names_is_a_discovered_family():
    named = {yaml.safe_load(p.read_text()).get("_target_") for p in (CONFIGS / "model").glob("*.yaml")} - {None}
    found = {f"{cls.__module__}.{cls.__name__}" for cls in registry.families()}
    assert named and named <= found
    assert registry.families() == tuple(sorted(registry.families(), key=lambda c: (c.__module__, c.__qualname__)))


def test_the_command_line_imports_no_family_at_start_up():
    code = ("import sys, ecoflap_exp.cli; print(sorted(m for m in sys.modules if m.startswith("
            "('ecoflap_exp.models.', 'open_clip', 'timm'))))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for family in {cls.__module__ for cls in registry.families()}:
        assert f"'{family}'" not in imported
    assert "'open_clip'" not in imported and "'timm'" not in imported


def loaded_models():
    """One already-loaded model per wrapping family, as a user would hand it to prune()."""
    import open_clip
    import timm

    llama = load_transformers_model(transformers.AutoModelForCausalLM, "llama_tiny", None, "random", "float32", 0)
    opt = load_transformers_model(transformers.AutoModelForCausalLM, "opt_tiny", None, "random", "float32", 0)
    vit = load_transformers_model(transformers.AutoModelForImageClassification, "vit_tiny", None, "random", "float32",
                                  0)
    timm_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=3)
    register_shipped_configs()
    clip = open_clip.create_model("clip_tiny")
    return [(llama, CausalLMAdapter), (opt, CausalLMAdapter), (vit, HFViTAdapter), (timm_vit, TimmViTAdapter),
            (clip, OpenCLIPAdapter)]


def test_each_loaded_model_is_claimed_by_exactly_its_family():
    assert set(registry.wrapping_adapters()) == {CausalLMAdapter, OpenCLIPAdapter, TimmViTAdapter, HFViTAdapter}
    for model, family in loaded_models():
        assert [cls for cls in registry.wrapping_adapters() if cls.wraps(model)] == [family], type(model)
        assert registry.adapter_wrapping(model) is family
    with pytest.raises(UserError, match="no adapter wraps a torch.nn.modules.linear.Linear; pass adapter=<one of "):
        registry.adapter_wrapping(torch.nn.Linear(2, 2))


def test_two_families_claiming_one_model_is_refused(monkeypatch):
    class Greedy(ModelAdapter):
        @classmethod
        def wraps(cls, model):
            return True

    monkeypatch.setattr(registry, "wrapping_adapters", lambda: (CausalLMAdapter, Greedy))
    llama = load_transformers_model(transformers.AutoModelForCausalLM, "llama_tiny", None, "random", "float32", 0)
    with pytest.raises(RuntimeError, match="CausalLMAdapter, Greedy all claim a LlamaForCausalLM"):
        registry.adapter_wrapping(llama)
