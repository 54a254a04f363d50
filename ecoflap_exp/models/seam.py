"""The seam between models and methods: what a method sees of a model.

- a `PrunableMatrix` is a 2-D weight (a parameter, or a row slice of one such as the q/k/v parts
  of a fused in_proj) plus the module whose forward input is that matrix's input;
- a `Block` is one transformer block and its prunable matrices;
- a `BlockInput` is what one calibration batch hands a block;
- a `Tower` is an ordered list of blocks that feed each other (vision encoder, text decoder...),
  with the official code's per-tower choices (Wanda's comparison group, which tokens are real).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ecoflap_exp.errors import UserError

Batch = dict[str, Any]
#: Wanda's comparison group: the weights of one output row, or of the whole matrix
Group = Literal["row", "matrix"]
#: a pruning plan: group name (a block, or a matrix) -> sparsity
Plan = dict[str, float]
#: the calibration batches of another pass over the data, named by its key (`zeroth/<matrix>`,
#: `prune/<tower>`) and drawn on to a sample count (None: the pruner's): the same samples with their
#: training views and prefix splits drawn again from (seed, key), as the official code's DataLoader
#: draws them each time it is iterated (calib.redraw)
Redraw = Callable[[str, int | None], list[Batch]]


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The input of an nn.Linear-like module: its first positional argument."""
    return args[0] if args else next(iter(kwargs.values()))


@dataclass(eq=False)
class PrunableMatrix:
    """`stream` names the token sequence the matrix reads, so the right token mask selects its
    real tokens: "hidden" (the block's own tokens) or "memory" (the states a cross-attention
    reads, e.g. the encoder output the T5 decoder's cross-attention k and v take). `transposed`:
    the parameter holds the matrix as (inputs, outputs), a projection applied as x @ W (Gemma 3's
    multimodal projector), where an nn.Linear holds (outputs, inputs)."""

    name: str
    param: nn.Parameter
    input_module: nn.Module
    rows: slice = field(default_factory=lambda: slice(None))
    input_of: Callable[[tuple, dict], torch.Tensor] = first_input
    stream: str = "hidden"
    transposed: bool = False

    def part(self, tensor: torch.Tensor) -> torch.Tensor:
        """The matrix's part of a tensor shaped like its parameter (the parameter, its gradient), as
        a view of (outputs, inputs)."""
        return (tensor.t() if self.transposed else tensor)[self.rows]

    @property
    def weight(self) -> torch.Tensor:
        """A view of the matrix inside its parameter, (outputs, inputs); writes go to the model."""
        return self.part(self.param.data)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight.shape
        return rows, cols

    @property
    def numel(self) -> int:
        return self.weight.numel()

    def zeros(self) -> int:
        """How many weights are exactly zero, counted without a mask as large as the matrix (a bool
        mask's sum widens it to int64 first: 8 bytes a weight)."""
        return self.numel - int(torch.count_nonzero(self.weight))


@dataclass(eq=False)
class Block:
    name: str
    module: nn.Module
    matrices: list[PrunableMatrix]

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)


@dataclass
class BlockInput:
    """What one calibration batch hands a block: hidden states plus every other argument, and the
    masks (batch, tokens; True = a real token) of the token streams that hold padding. A stream
    without a mask is all real tokens. `sizes`: where a tower's blocks take every sample's tokens
    as one sequence with no batch axis (Qwen2-VL's ViT), each sample's share of its rows, so that
    per-sample measures (intrinsic dimension) can split it; None where the batch axis is there."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    sizes: tuple[int, ...] | None = None


def linear_matrices(prefix: str, block: nn.Module) -> list[PrunableMatrix]:
    """Every nn.Linear inside a block, found by type (not by name, since names change between
    library versions), in module order."""
    return [
        PrunableMatrix(f"{prefix}.{name}", module.weight, module)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """The model's stack of transformer blocks: the longest ModuleList (or Sequential, as timm's)
    whose entries all hold Linear layers, so a library renaming its modules does not break it."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) > 0
        and all(any(isinstance(m, nn.Linear) for m in entry.modules()) for entry in module)
    ]
    if not candidates:
        raise UserError(f"{type(model).__name__} has no list of blocks with Linear layers to prune")
    return max(candidates, key=lambda item: len(item[1]))


def blocks_of(path: str, layers: nn.ModuleList | nn.Sequential) -> list[Block]:
    return [Block(f"{path}.{i}", layer, linear_matrices(f"{path}.{i}", layer)) for i, layer in enumerate(layers)]


class Tower:
    """An ordered stack of blocks; block i's output is block i+1's hidden-state input.

    The default plumbing suits blocks called as `block(hidden, **kwargs)` that return the new
    hidden states (or a tuple that starts with them) and take the same keyword arguments at every
    depth. A model whose blocks hand more than hidden states down (T5's position bias) overrides
    `next_input`.

    The official code's per-tower choices travel with the tower: `wanda_group`, the comparison
    group Wanda uses here unless the run overrides it (ECoFLaP: BLIP-2's EVA ViT per whole
    matrix; T5, CLIP, LLaMA per output row), and `token_masks(batch)`, which of a batch's tokens
    are real in each stream the blocks read ({} when there is no padding), so pads never enter
    input statistics.

    `sample_sizes(batch)`, for towers whose blocks see the batch as one sequence of all samples'
    tokens, gives each sample's share of it (BlockInput.sizes).

    How towers feed each other (tower_outputs): `root`, the module whose output is the tower's
    output for the rest of the model (None: never served from storage), and `reads`, the names
    of the towers whose outputs that root consumes (None: every earlier tower, the safe guess).
    """

    def __init__(self, name: str, blocks: list[Block], wanda_group: Group = "row",
                 token_masks: Callable[[Batch], dict[str, torch.Tensor]] | None = None,
                 root: nn.Module | None = None, reads: tuple[str, ...] | None = None,
                 sample_sizes: Callable[[Batch], list[int]] | None = None):
        self.name = name
        self.blocks = blocks
        self.wanda_group = wanda_group
        self._token_masks = token_masks
        self.root = root
        self.reads = reads
        self._sample_sizes = sample_sizes

    def sample_sizes(self, batch: Batch) -> tuple[int, ...] | None:
        return tuple(int(n) for n in self._sample_sizes(batch)) if self._sample_sizes else None

    def token_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: v.bool() for k, v in self._token_masks(batch).items()} if self._token_masks else {}

    def split_input(self, args: tuple, kwargs: dict) -> BlockInput:
        if args:
            return BlockInput(args[0], args[1:], dict(kwargs))
        kwargs = dict(kwargs)
        return BlockInput(kwargs.pop("hidden_states"), (), kwargs)

    def run_block(self, block: Block, inp: BlockInput) -> Any:
        return block.module(inp.hidden, *inp.args, **inp.kwargs)

    def next_input(self, output: Any, inp: BlockInput) -> BlockInput:
        hidden = output[0] if isinstance(output, tuple | list) else output
        return BlockInput(hidden, inp.args, inp.kwargs, inp.masks, inp.sizes)

    def passthrough(self, args: tuple, kwargs: dict) -> Any:
        """What a block returns when it is skipped (its result is not needed): something shaped
        like its real output, here its own hidden-state input."""
        return self.split_input(args, kwargs).hidden


