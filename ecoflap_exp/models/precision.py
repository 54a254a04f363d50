"""Precision per part of a model, as the official code runs it.

LAVIS does not run BLIP-2 in one dtype: the EVA ViT's Linear and Conv weights are converted to
fp16 (convert_weights_to_fp16: its norms, embeddings and q/v biases stay fp32) and it runs under
fp16 autocast; the Q-Former and the projection into the language model stay fp32 and run without
autocast; the FlanT5 weights are cast to bf16 and run under bf16 autocast, fed the fp32 query
outputs concatenated with the bf16 text embeddings, which keeps the encoder's residual stream in
fp32. (Here the ViT's patch convolution is held in fp32: transformers casts the class and position
embeddings to its dtype, which would make the ViT's residual stream fp16 where LAVIS's is fp32;
under fp16 autocast it computes in fp16 from the same rounded values.)

A `PartPrecision` says this for one part (a submodule, by name): the dtype of its Linear weights
and biases, of everything else, and the autocast its forward runs under. `apply_precision` casts
the parts and makes every call into a part (the model's forward, generation's direct encoder
calls, the engine's block-by-block calls) run under the part's autocast, by hooks on the part and
on each of its submodules that has submodules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class PartPrecision:
    linear: torch.dtype  # nn.Linear weights and biases (the prunable matrices)
    others: torch.dtype  # every other floating parameter and buffer (norms, embeddings, convolutions)
    autocast: torch.dtype | None = None  # the autocast the part's forward runs under
    #: nn.LayerNorm weights rounded to `others` but held in fp32: CUDA's autocast computes layer norms
    #: in fp32 from them (so the same numbers); CPU's autocast would mix an fp32 stream with fp16 norms
    norms_fp32: bool = False

    def describe(self) -> str:
        """E.g. "linear fp16, others fp32, autocast fp16"."""
        autocast = SHORT[self.autocast] if self.autocast is not None else "none"
        norms = f" (LayerNorms {SHORT[self.others]} values held in fp32)" if self.norms_fp32 else ""
        return f"linear {SHORT[self.linear]}, others {SHORT[self.others]}{norms}, autocast {autocast}"


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)


class Autocast:
    """Forward hooks that run a module's forward under one autocast on the device of its input
    (nested calls re-enter it). Each module keeps the contexts it opened, so its exit hook, which
    runs even when the forward (or an earlier hook) raises, closes only what it opened. (A
    KeyboardInterrupt skips exit hooks: the run ends there.)"""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.open: dict[int, list[torch.autocast]] = {}

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensor = first_tensor(args, kwargs)
        device = tensor.device if tensor is not None else next(module.parameters()).device
        context = torch.autocast(device.type, dtype=self.dtype)
        context.__enter__()
        self.open.setdefault(id(module), []).append(context)

    def exit(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        opened = self.open.get(id(module))
        if opened:
            opened.pop().__exit__(None, None, None)

    def attach(self, module: nn.Module) -> None:
        for sub in module.modules():
            if sub is module or any(True for _ in sub.children()):
                sub.register_forward_pre_hook(self.enter, with_kwargs=True)
                sub.register_forward_hook(self.exit, with_kwargs=True, always_call=True)


def cast_part(part: nn.Module, spec: PartPrecision) -> None:
    """Each floating tensor of the part in its dtype, a tensor shared by modules once (ValueError if
    they would hold it in different dtypes)."""
    wanted: dict[int, torch.dtype] = {}
    for module in part.modules():
        dtype = spec.linear if isinstance(module, nn.Linear) else spec.others
        norm = spec.norms_fp32 and isinstance(module, nn.LayerNorm)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if not tensor.is_floating_point():
                continue
            if wanted.setdefault(id(tensor), dtype) != dtype:
                raise ValueError(f"a tensor of {type(module).__name__} is shared with a module held in "
                                 f"{wanted[id(tensor)]}, here {dtype}")
            tensor.data = tensor.data.to(dtype).float() if norm else tensor.data.to(dtype)


def held(model: nn.Module) -> dict[str, str]:
    """The dtypes each top-level part of a model holds (its children and its own parameters), for the
    record of a model held in one dtype (transformers may keep parts in fp32)."""
    parts: dict[str, set[torch.dtype]] = {name: {p.dtype for p in child.parameters()}
                                          for name, child in model.named_children()}
    parts |= {name: {p.dtype} for name, p in model.named_parameters(recurse=False)}
    return {name: "/".join(sorted(SHORT.get(d, str(d)) for d in dtypes)) for name, dtypes in parts.items() if dtypes}


def apply_precision(model: nn.Module, parts: Mapping[str, PartPrecision]) -> dict[str, str]:
    """Cast each named part and hook its autocast; returns each part's description for the record."""
    for name, spec in parts.items():
        part = model.get_submodule(name)
        cast_part(part, spec)
        if spec.autocast is not None:
            Autocast(spec.autocast).attach(part)
    return {name: spec.describe() for name, spec in parts.items()}
