"""finetune=lora: recovery fine-tuning of a pruned model with LoRA adapters (peft), as Wanda's
lora_ft does (locuslab/wanda, lora_ft/finetune_lm.py at 8e8fc87): the pruned base weights are frozen,
so every pruned zero stays exactly 0, and only the adapters train, through the same accelerate loop
as the other modes.

Wanda's settings, where they are set: r=8, alpha=16, dropout=0.05 (finetune_lm.py L94-104, the
ModelArguments defaults), target_modules q_proj,v_proj and bias="none" (L376-383), learning rate 1e-4
(script.sh / README), an effective batch of 128 as 1 per device x 128 accumulated (L522-523). Not
reproduced: its 5 warm-up steps and linear decay (HF Trainer; the loop here sets a cosine per
epoch), fp16 base weights with fp16 autocast (set model.dtype and finetune.mixed_precision) and
peft's int8 preparation (L375).

After training the adapters are either kept apart (`merge=none`: the run's evaluation sees
W x + s B A x, exactly the trained function; the base weights keep their zeros; with save_model=true
they are written in peft's format to <saved model>/lora) or merged as (W + s B A) * mask
(`merge=masked`: the zeros stay, but the adapter's share that falls on pruned positions is dropped,
so the function changes; the record says how much of the update went). A plain merge W + s B A
fills the zeros (B A is dense), so it is not offered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.extras import require
from ecoflap_exp.finetune.masking import FixedMasks
from ecoflap_exp.finetune.trainer import FineTuning, Outcome
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import PrunableMatrix
from ecoflap_exp.options import Count, Fraction, Names, PositiveFloat

Merge = Literal["none", "masked"]
#: the attention query and value projections under the names the families give them (LLaMA, OPT,
#: Qwen, Gemma: q_proj, v_proj, as Wanda adapts; BERT-style BLIP text towers: query, value)
DEFAULT_TARGETS = (r".*\.(q_proj|query)", r".*\.(v_proj|value)")
ADAPTER = "default"  # peft's name for a model's one adapter


class LoRADelta(nn.Module):
    """A trained adapter kept beside its matrix: x -> s B (A x), added to the matrix's output by a
    forward hook. A and B are non-persistent buffers, so they move with the model but stay out of
    its saved weights and its parameters, and the matrix stays an nn.Linear under its own name
    (which the verify step and the rest of the run find it by)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.register_buffer("a", a.detach().clone(), persistent=False)
        self.register_buffer("b", b.detach().clone(), persistent=False)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as peft's lora.Linear: the input cast to the adapter's dtype, the sum back to the output's
        return nn.functional.linear(nn.functional.linear(x.to(self.a.dtype), self.a), self.b) * self.scaling

    def weight(self) -> torch.Tensor:
        """s B A: the adapter as a change of the matrix's weight."""
        return self.scaling * (self.b @ self.a)


def add_lora(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return output + module.lora(inputs[0]).to(output.dtype)


class LoRAFineTuning(FineTuning):
    """Train LoRA adapters on the matrices `target_modules` names (regular expressions, each
    matched against a whole matrix name; null: the query and value projections) with the pruned
    base weights frozen; `merge` says what the run keeps after training."""

    mode = "lora"
    unshardable = "the adapters are a few million parameters and the frozen base has no gradients or optimizer state"

    def __init__(self, r: Count = 8, alpha: PositiveFloat = 16, dropout: Fraction = 0.05,
                 target_modules: Names | None = None, merge: Merge = "none", lr: PositiveFloat = 1e-4,
                 **common: Any):
        super().__init__(lr=lr, **common)
        require("peft", "lora", "finetune=lora")
        if dropout == 1:
            raise UserError(f"finetune.dropout={dropout} drops every adapter input; give a value in [0, 1)")
        for pattern in target_modules or ():
            try:
                re.compile(pattern)
            except re.error as err:
                raise UserError(f"finetune.target_modules entry {pattern!r} is not a regular expression ({err}); "
                                f"write one that matches whole matrix names, e.g. '.*\\.q_proj'") from None
        self.r, self.alpha, self.dropout, self.merge = r, float(alpha), dropout, merge
        self.target_modules = tuple(target_modules or DEFAULT_TARGETS)
        self.deltas: dict[str, LoRADelta] = {}
        self.saved: tuple[dict[str, torch.Tensor], Any] | None = None

    def method_name(self, oneshot: str, target: float) -> str:
        return ("dense" if target == 0 else oneshot) + "+lora-ft"

    def targets(self, adapter: ModelAdapter) -> dict[str, PrunableMatrix]:
        """The matrices the adapters go on, by the path of their nn.Linear in the model."""
        paths = {id(module): path for path, module in adapter.model.named_modules()}
        chosen = {}
        for m in adapter.matrices():
            if not any(re.fullmatch(pattern, m.name) for pattern in self.target_modules):
                continue
            module = m.input_module
            if not isinstance(module, nn.Linear) or module.weight is not m.param or m.rows != slice(None):
                raise UserError(f"finetune.target_modules matches {m.name}, which is not an nn.Linear the model calls "
                                f"as a module (a fused parameter's part, a weight its parent reads directly, a "
                                f"transposed projection); LoRA wraps whole nn.Linear modules: leave it out of "
                                f"finetune.target_modules")
            chosen[paths[id(module)]] = m
        if not chosen:
            raise UserError(f"finetune.target_modules={list(self.target_modules)} matches none of the "
                            f"{sum(1 for _ in adapter.matrices())} prunable matrices of {type(adapter).__name__} "
                            f"(e.g. {next(adapter.matrices()).name}); give regular expressions over their names")
        return chosen

    def prepare(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        """Wrap the target matrices' nn.Linear modules with peft's LoRA layers (A: Kaiming, B: 0,
        so training starts from the pruned model's function; drawn from `seed`); the adapters'
        parameters train, held in float32 whatever the base's dtype (peft's autocast_adapter_dtype)."""
        from peft import LoraConfig, get_peft_model

        self.chosen = self.targets(adapter)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=list(self.chosen), bias="none")
        devices = [adapter.device] if adapter.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            # in place: the adapter's model is the PeftModel's base model, its Linears wrapped
            self.peft_model = get_peft_model(adapter.model, config)
        return [p for name, p in adapter.model.named_parameters() if ".lora_" in name]

    def begin(self, matrices: list[PrunableMatrix], schedule_steps: int, steps_per_epoch: int,
              target: float, ids: Mapping[str, float] | None) -> FixedMasks:
        # the base is frozen, so nothing masks during training; the zeros are what a masked merge keeps
        self.masks = FixedMasks(matrices)
        return self.masks

    def after_step(self, step: int, epoch_start: bool) -> bool:
        return False

    def run(self, adapter: ModelAdapter, samples: Any, augment: bool, folder: Path, target: float,
            ids: Mapping[str, float] | None = None, trained_on: str = "") -> Outcome:
        outcome = super().run(adapter, samples, augment, folder, target, ids, trained_on)
        outcome.info["lora"] = self.finish(adapter)
        return outcome

    @torch.no_grad()
    def finish(self, adapter: ModelAdapter) -> dict[str, Any]:
        """Take the peft layers out of the model (its Linears back under their own names) and keep
        the adapters apart (merge=none) or merge them under the masks (merge=masked); what the
        record says of them."""
        from peft.utils import get_peft_model_state_dict

        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.peft_model).items()}
        config = self.peft_model.peft_config[ADAPTER]
        self.saved = (state, config)
        layers = {path: adapter.model.get_submodule(path) for path in self.chosen}
        deltas = {path: LoRADelta(layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight,
                                  float(layer.scaling[ADAPTER])) for path, layer in layers.items()}
        self.peft_model.unload()  # no merge: each Linear back in its place, its weight untouched
        info: dict[str, Any] = {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "merge": self.merge,
                                "targets": sorted(m.name for m in self.chosen.values()),
                                "trainable_params": sum(v.numel() for v in state.values())}
        if self.merge == "none":
            for path, delta in deltas.items():
                linear = adapter.model.get_submodule(path)
                linear.lora = delta  # registered under the Linear: moves with it (.to) and stays out of its state
                linear.register_forward_hook(add_lora)
            info["adapters"] = "kept apart: the evaluation adds them; save_model=true writes <saved model>/lora"
            return info
        dropped = total = 0.0
        for path, delta in deltas.items():
            m = self.chosen[path]
            keep = self.masks.keep[m.name]
            change = delta.weight().to(m.weight.device)
            dropped += float(change[~keep].float().pow(2).sum())
            total += float(change.float().pow(2).sum())
            m.weight.copy_(((m.weight.float() + change) * keep).to(m.weight.dtype))
        self.saved = None  # merged: the saved model holds them
        # the share of the adapters' squared Frobenius norm that fell on pruned positions and went
        info["merge_dropped_share"] = dropped / total if total else 0.0
        return info

    def save_beside(self, folder: Path) -> None:
        """The adapters as peft's save_pretrained writes one (adapter_config.json,
        adapter_model.safetensors), in <folder>/lora: `PeftModel.from_pretrained(<the saved
        model>, <folder>/lora)` gives the model the run evaluated."""
        if self.saved is None:
            return
        from safetensors.torch import save_file

        state, config = self.saved
        target = folder / "lora"
        target.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.inference_mode = True
        config.base_model_name_or_path = str(folder)
        config.save_pretrained(str(target))
        (target / "README.md").write_text(
            f"LoRA adapters (r={self.r}, alpha={self.alpha:g}) trained on the pruned model in `..` with its weights "
            f"frozen (ecoflap_exp finetune=lora).\n\n```python\nfrom peft import PeftModel\nmodel = "
            f"PeftModel.from_pretrained(pruned_model, {json.dumps(str(target))})\n```\n")
