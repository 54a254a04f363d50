"""Scoped hooks on a model's modules, the two ways scoring and pruning reach into a forward: a
module's forward replaced for a scope (blocks that pass their input through, tower roots served
stored outputs), and the inputs of a block's matrices observed as the block runs (input
statistics, the ID scorer's per-matrix outputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from ecoflap_exp.models.seam import PrunableMatrix

#: observe(matrix, input, output): the matrix's input, and the output of the module it reads it in
MatrixObserver = Callable[[PrunableMatrix, torch.Tensor, Any], None]


@contextlib.contextmanager
def replacing_forward(replacements: dict[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Within, each module's forward is its replacement. It is set on the instance, so the module's
    call and its hooks still run around it; the instance's own `forward` attribute before (an
    enclosing replacement's, or none) is restored after."""
    saved = [(module, vars(module).get("forward")) for module in replacements]
    try:
        for module, forward in replacements.items():
            module.forward = forward
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                vars(module).pop("forward", None)
            else:
                module.forward = previous


def is_replaced(module: nn.Module) -> bool:
    """Whether the module's forward is replaced (by `replacing_forward`) right now."""
    return "forward" in vars(module)


@contextlib.contextmanager
def observing_matrices(matrices: list[PrunableMatrix], observe: MatrixObserver) -> Iterator[None]:
    """Within, every forward of a matrix's input module calls observe(matrix, input, output) for
    each of the matrices it feeds, in their order."""
    by_module: dict[nn.Module, list[PrunableMatrix]] = {}
    for m in matrices:
        by_module.setdefault(m.input_module, []).append(m)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, fed: list[PrunableMatrix]) -> None:
        for m in fed:
            observe(m, m.input_of(args, kwargs), output)

    handles = []
    try:
        for module, fed in by_module.items():
            handles.append(module.register_forward_hook(partial(hook, fed=fed), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
