"""The block walker that scoring and pruning share: capture a tower's block inputs, collect input
statistics from real tokens, and walk the tower block by block.

`capture_inputs` runs the model once per calibration batch up to the tower's first block and keeps
that block's inputs (hidden states, every other argument, the tower's token masks of the batch);
towers whose outputs cannot have changed are served from tower_outputs when a scope is open.
`walk_tower` then hands each block its inputs over all batches and, once the consumer is done with
it (it may have pruned it), re-runs the block to make the next block's inputs. `collect_stats`
runs one block over its inputs with hooks that feed each matrix's statistics. Beyond the model,
memory holds one block's inputs and one block's statistics.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ecoflap_exp.input_stats import InputStats
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Tower
from ecoflap_exp.progress import track
from ecoflap_exp.tower_outputs import TowerOutputs, active


def move(obj: Any, device: torch.device) -> Any:
    """A block input (or any nest of tensors) on `device`."""
    if isinstance(obj, BlockInput):
        return BlockInput(move(obj.hidden, device), move(obj.args, device), move(obj.kwargs, device),
                          move(obj.masks, device), obj.sizes)
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    return obj


class _Reached(Exception):
    """Raised inside the model's forward once the tower's first block has its inputs."""


def capture_inputs(adapter: ModelAdapter, tower: Tower, batches: list[Batch]) -> list[BlockInput]:
    """The inputs of the tower's first block per batch; within an open tower_outputs scope, the
    towers it reads and those beside it are served their stored outputs."""
    outputs = active(adapter)
    with outputs.serving(outputs.capturing(tower.name)) if outputs else contextlib.nullcontext():
        return _capture(adapter, tower, batches, outputs)


def _capture(adapter: ModelAdapter, tower: Tower, batches: list[Batch], outputs: TowerOutputs | None
             ) -> list[BlockInput]:
    inputs: list[BlockInput] = []
    masks: dict[str, torch.Tensor] = {}  # the token masks of the batch being run
    sizes: list[tuple[int, ...] | None] = [None]  # and its samples' shares of a batch-less sequence

    def catch(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inp = tower.split_input(args, kwargs)
        inp.masks, inp.sizes = masks, sizes[0]
        inputs.append(inp)
        raise _Reached

    handle = tower.blocks[0].module.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            masks, sizes[0] = tower.token_masks(batch), tower.sample_sizes(batch)
            try:
                with outputs.batch(batch) if outputs else contextlib.nullcontext():
                    adapter.forward(batch)
            except _Reached:
                continue
            raise RuntimeError(f"tower {tower.name}: the model's forward never reached {tower.blocks[0].name}")
    finally:
        handle.remove()
    return inputs


def real_tokens(matrix: PrunableMatrix, x: torch.Tensor, masks: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, int]:
    """A matrix's input as (tokens, columns) of the real tokens only, and its number of samples:
    the batch entries of a (batch, tokens, columns) input (the reference codes' count)."""
    mask = masks.get(matrix.stream)
    if mask is None:
        return x.reshape(-1, x.shape[-1]), x.shape[0] if x.dim() > 2 else 1
    if x.dim() == 2 and x.shape[0] == mask.numel():  # tokens flattened before the matrix (OPT's MLP)
        return x[mask.reshape(-1)], mask.shape[0]
    if x.shape[:-1] != mask.shape:
        raise RuntimeError(f"{matrix.name}: input of shape {tuple(x.shape)} does not match the token mask "
                           f"{tuple(mask.shape)} of its stream {matrix.stream!r}; the adapter's token_masks or the "
                           f"matrix's stream is wrong")
    return x[mask], mask.shape[0]


def collect_stats(
    tower: Tower, block: Block, inputs: list[BlockInput], new_stats: Callable[[int, torch.device], InputStats],
    device: torch.device, pads: bool = False,
) -> dict[PrunableMatrix, InputStats]:
    """Run the block over every cached input with hooks that feed each matrix's statistics, from
    the real tokens of each input (its stream's mask; pads never enter), or with `pads` from every
    token.

    Matrices handed the very same input tensor (q, k and v; gate and up) share one statistics
    object, so it is accumulated and stored once (a SparseGPT Hessian is cols x cols).
    """
    stats: dict[PrunableMatrix, InputStats] = {}
    # this batch's inputs so far and their statistics; holding the tensors keeps them alive, so
    # identity can't be confused by a freed tensor's memory being reused within the forward
    seen: list[tuple[torch.Tensor, InputStats]] = []
    current: list[BlockInput] = []

    def observe(matrices: list[PrunableMatrix], args: tuple, kwargs: dict) -> None:
        for m in matrices:
            x = m.input_of(args, kwargs)
            same = next((st for t, st in seen if t is x), None)
            if m not in stats:
                stats[m] = same or new_stats(m.shape[1], device)
            if same is None:
                seen.append((x, stats[m]))
                stats[m].add(*real_tokens(m, x, {} if pads else current[0].masks))
            elif same is not stats[m]:
                raise RuntimeError(f"{m.name}: its input was shared differently in an earlier batch")

    by_module: dict[torch.nn.Module, list[PrunableMatrix]] = defaultdict(list)
    for m in block.matrices:
        by_module[m.input_module].append(m)
    handles = [
        mod.register_forward_hook(lambda _mod, args, kwargs, _out, ms=ms: observe(ms, args, kwargs), with_kwargs=True)
        for mod, ms in by_module.items()
    ]
    try:
        for inp in inputs:
            seen.clear()
            current[:] = [inp]
            tower.run_block(block, inp)
    finally:
        seen.clear()
        for h in handles:
            h.remove()
    return {m: stats[m] for m in block.matrices}


def walk_tower(
    adapter: ModelAdapter,
    tower: Tower,
    batches: list[Batch],
    device: torch.device,
    offload: bool = False,
    description: str = "",
    after: Callable[[Block, list[BlockInput]], None] | None = None,
) -> Iterator[tuple[Block, list[BlockInput]]]:
    """Yield each block of a tower with its inputs over all calibration batches.

    The inputs of block 0 come from running the model; after the consumer is done with a block
    (it may have pruned it), the block is re-run to turn its inputs into the next block's, which
    `after(block, outputs)` may inspect.
    """
    inputs = [move(inp, device) for inp in capture_inputs(adapter, tower, batches)]
    for block in track(tower.blocks, description or tower.name, total=len(tower.blocks)):
        home = next(block.module.parameters()).device
        if offload:
            block.module.to(device)
        yield block, inputs
        for i, inp in enumerate(inputs):
            inputs[i] = tower.next_input(tower.run_block(block, inp), inp)
        if after is not None:
            after(block, inputs)
        if offload:
            block.module.to(home)
