"""finetune=lora (ecoflap_exp.finetune.lora): LoRA adapters trained on a pruned model with its weights
frozen, as Wanda's lora_ft; every pruned zero kept, the adapters saved in peft's format and reloaded by
peft onto the saved pruned model, and the masked merge against its hand-computed weights."""

import json

import pytest
import torch

from ecoflap_exp.api import prune
from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.finetune.lora import LoRAFineTuning
from ecoflap_exp.runner import run
from tests.integration.test_run import config


def pruned(adapter, batches):
    prune(adapter, batches, pruner="magnitude", sparsity=0.5)
    return adapter


def train(adapter, batches, tmp_path, **options):
    """20 steps of lr 1e-2 on one fixed batch of 4, so the loss on that batch must fall."""
    tuner = LoRAFineTuning(**{"lr": 1e-2, "epochs": 20, "batch_size": 4, "grad_accumulation": 1, **options})
    samples = list(batches[0]["input_ids"])
    return tuner, tuner.run(adapter, samples, False, tmp_path / "ckpt", 0.5, trained_on="one batch")


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], use_cache=False).logits


def test_lora_keeps_every_base_weight_and_its_zeros_and_lowers_the_loss(tmp_path, tiny_llama, llama_batches):
    adapter = pruned(tiny_llama, llama_batches)
    base = {name: p.clone() for name, p in adapter.model.named_parameters()}
    with torch.no_grad():
        before = adapter.loss(llama_batches[0]).item()
    # weight decay 0.5 would move any base weight the optimizer held
    tuner, outcome = train(adapter, llama_batches, tmp_path, weight_decay=0.5)
    assert {name: p for name, p in adapter.model.named_parameters()}.keys() == base.keys()  # no adapter params left
    for name, p in adapter.model.named_parameters():
        assert torch.equal(p, base[name]), name  # bit for bit, zeros included
    assert all(point[1] == 0.5 for point in outcome.info["sparsity_trajectory"])
    with torch.no_grad():
        after = adapter.loss(llama_batches[0]).item()  # the base plus the adapters kept apart
    assert after < before - 0.1, (before, after)
    info = outcome.info["lora"]
    assert info["targets"] == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    # A is r x in, B is out x r: q_proj 64 -> 64, v_proj 64 -> 32 (grouped KV heads), r = 8, two blocks
    assert info["trainable_params"] == 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8))
    assert outcome.info["mode"] == "lora" and outcome.info["steps"] == 20


def test_saved_adapters_reload_with_peft_onto_the_saved_pruned_model_to_the_same_logits(tmp_path, tiny_llama,
                                                                                          llama_batches):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = pruned(tiny_llama, llama_batches)
    tuner, _ = train(adapter, llama_batches, tmp_path)
    folder = tmp_path / "model"
    adapter.save(folder)
    tuner.save_beside(folder)
    assert {p.name for p in (folder / "lora").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((folder / "lora" / "adapter_config.json").read_text())["r"] == 8
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    for name, p in reloaded.named_parameters():  # the saved model is the pruned base, no adapter in it
        torch.testing.assert_close(p, adapter.model.get_parameter(name), rtol=0, atol=0)
    batch = llama_batches[1]
    plain = logits(reloaded, batch)
    with_adapters = logits(PeftModel.from_pretrained(reloaded, str(folder / "lora")).eval(), batch)
    ours = logits(adapter.model, batch)
    torch.testing.assert_close(ours, with_adapters, rtol=0, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the adapters change the function


def test_masked_merge_keeps_the_zeros_and_is_the_adapters_added_under_the_mask(tmp_path, llama_batches):
    from ecoflap_exp.models.causal_lm import CausalLMAdapter

    models = {}
    for merge in ("none", "masked"):  # the same seed: the same adapters
        adapter = pruned(CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=0), llama_batches)
        start = {m.name: m.weight.clone() for m in adapter.matrices()}
        tuner, outcome = train(adapter, llama_batches, tmp_path / merge, merge=merge)
        models[merge] = adapter
    kept = {p for p, _ in models["none"].model.named_modules() if hasattr(_, "lora")}
    dropped = total = 0.0
    for m in models["masked"].matrices():
        if m.name not in kept:
            assert torch.equal(m.weight, start[m.name]), m.name
            continue
        delta = models["none"].model.get_submodule(m.name).lora
        change = delta.scaling * delta.b @ delta.a
        keep = start[m.name] != 0
        torch.testing.assert_close(m.weight, (start[m.name] + change) * keep, rtol=0, atol=1e-6)
        assert bool((m.weight[~keep] == 0).all()) and m.weight.count_nonzero() == keep.sum()
        dropped, total = dropped + change[~keep].pow(2).sum().item(), total + change.pow(2).sum().item()
    assert len(kept) == 4
    assert outcome.info["lora"]["merge_dropped_share"] == pytest.approx(dropped / total, rel=1e-5)
    assert 0 < dropped / total < 1 and tuner.saved is None  # merged: nothing to save apart
    batch = llama_batches[1]  # the mask dropped part of the update: the function is not the trained one
    assert (logits(models["masked"].model, batch) - logits(models["none"].model, batch)).abs().max() > 1e-4


def test_a_lora_run_records_the_adapters_passes_verify_and_saves_them_beside_the_model(tmp_path):
    record = run(config(tmp_path, "finetune=lora", "finetune.batch_size=4", "finetune.grad_accumulation=1",
                        "finetune.max_steps=3", "finetune.target_modules=[.*down_proj]", "save_model=true",
                        "sparsity=0.5"))
    assert record.method == "wanda+lora-ft" and record.achieved.overall == pytest.approx(0.5, abs=1e-4)
    assert record.finetune["lora"]["targets"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert record.finetune["zeroed_by_training"] == 0 and record.finetune["steps"] == 3
    config_file = json.loads((tmp_path / "results" / "models" / record.id / "lora" / "adapter_config.json").read_text())
    assert sorted(config_file["target_modules"]) == record.finetune["lora"]["targets"]


def test_bad_lora_options_end_in_one_message(tmp_path, tiny_llama):
    with pytest.raises(ConfigError, match=r"finetune.merge='dense' is unknown; use one of none, masked"):
        run(config(tmp_path, "finetune=lora", "finetune.merge=dense"))
    with pytest.raises(ConfigError, match=r"target_modules entry '\(q_proj' is not a regular expression"):
        run(config(tmp_path, "finetune=lora", "finetune.target_modules=['(q_proj']"))
    with pytest.raises(ConfigError, match="finetune.dropout=1.0 drops every adapter input"):
        run(config(tmp_path, "finetune=lora", "finetune.dropout=1.0"))
    with pytest.raises(ConfigError, match="finetune=lora with finetune.fsdp=true: the adapters are a few million"):
        run(config(tmp_path, "finetune=lora", "finetune.fsdp=true"))
    with pytest.raises(UserError, match=r"matches none of the 14 prunable matrices of CausalLMAdapter"):
        LoRAFineTuning(target_modules=["lm_head"]).targets(tiny_llama)


def test_lora_refuses_a_matrix_its_parent_reads_as_a_weight():
    from ecoflap_exp.models.open_clip import OpenCLIPAdapter

    clip = OpenCLIPAdapter("clip_tiny", init="random")
    with pytest.raises(UserError, match=r"matches none of the \d+ prunable matrices of OpenCLIPAdapter"):
        LoRAFineTuning().targets(clip)  # its attention is one fused in_proj: no q/v projection to default to
    with pytest.raises(UserError, match=r"attn.out_proj, which is not an nn.Linear the model calls as a module"):
        LoRAFineTuning(target_modules=[".*out_proj"]).targets(clip)  # nn.MultiheadAttention reads its weight
    assert len(LoRAFineTuning(target_modules=[".*mlp.c_fc"]).targets(clip)) == len(list(clip.blocks()))
