"""The block walker that scoring and pruning share: capture a tower's block inputs, collect input
statistics from real tokens, and walk the tower block by block.

`capture_inputs` runs the model once per calibration batch up to the tower's first block and keeps
that block's inputs (hidden states, every other argument, the tower's token masks of the batch);
towers whose outputs cannot have changed are served from the TowerOutputs it is handed, if any.
`capture_arguments` also keeps what the model's forward hands every later block besides its hidden
states (the tower's blocks pass their input through meanwhile, computing nothing): blocks need not
share their arguments (Gemma-3 alternates sliding-window and global attention, each with its own
mask and rotary table; Qwen2.5-VL's ViT alternates windowed and full attention, each with its own
sequence boundaries). `walk_tower` then hands each block its inputs over all batches and, once the
consumer is done with it (it may have pruned it), re-runs the block to make the next block's
inputs: its output as hidden states with the next block's own arguments. `collect_stats`
runs one block over its inputs observing its matrices' inputs, which feed each matrix's
statistics. Beyond the model, memory holds one block's inputs and one block's statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.input_stats import InputStats
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Tower
from ecoflap_exp.module_hooks import observing_matrices, replacing_forward
from ecoflap_exp.progress import track
from ecoflap_exp.tower_outputs import TowerOutputs


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
    """Raised inside the model's forward once the tower's blocks have their inputs."""


def passing_through(skipped: list[tuple[Tower, Block]]) -> contextlib.AbstractContextManager[None]:
    """Within, each block returns its input as its tower hands it on (Tower.passthrough), computing
    nothing."""
    return replacing_forward({block.module: partial(skipped_forward, tower) for tower, block in skipped})


def skipped_forward(tower: Tower, *args: Any, **kwargs: Any) -> Any:
    return tower.passthrough(args, kwargs)


def capture_inputs(adapter: ModelAdapter, tower: Tower, batches: list[Batch], outputs: TowerOutputs | None = None
                   ) -> list[BlockInput]:
    """The inputs of the tower's first block per batch; with `outputs`, the towers it reads and
    those beside it are served their stored outputs."""
    return [per_block[0] for per_block in capture_arguments(adapter, tower, batches, 1, outputs)]


def capture_arguments(adapter: ModelAdapter, tower: Tower, batches: list[Batch], count: int | None = None,
                      outputs: TowerOutputs | None = None) -> list[list[BlockInput]]:
    """Per batch, what the model's forward hands each of the tower's first `count` blocks (all by
    default): block 0's whole input, the others' arguments (their hidden states are block 0's,
    passed through); with `outputs`, served as in capture_inputs."""
    with outputs.serving(outputs.capturing(tower.name)) if outputs else contextlib.nullcontext():
        return _capture(adapter, tower, batches, outputs, count or len(tower.blocks))


def _capture(adapter: ModelAdapter, tower: Tower, batches: list[Batch], outputs: TowerOutputs | None, count: int
             ) -> list[list[BlockInput]]:
    captured: list[list[BlockInput]] = []
    current: dict[str, Any] = {}  # the batch being run: its token masks, its samples' shares of a batch-less sequence
    blocks = tower.blocks[:count]

    def catch(module: torch.nn.Module, args: tuple, kwargs: dict, index: int) -> None:
        if index != len(captured[-1]):
            raise UserError(f"tower {tower.name}: the model's forward ran {blocks[index].name} after "
                            f"{len(captured[-1])} of the blocks before it; a tower whose blocks do not run in order "
                            f"cannot be walked block by block")
        inp = tower.split_input(args, kwargs)
        inp.masks, inp.sizes = current["masks"], current["sizes"]
        captured[-1].append(inp)
        if index == count - 1:
            raise _Reached

    handles = []
    try:
        handles += [block.module.register_forward_pre_hook(partial(catch, index=i), with_kwargs=True)
                    for i, block in enumerate(blocks)]
        # the blocks before the last compute nothing: only the arguments the next blocks get are kept
        with passing_through([(tower, block) for block in blocks[:-1]]):
            for batch in batches:
                current.update(masks=tower.token_masks(batch), sizes=tower.sample_sizes(batch))
                captured.append([])
                try:
                    with outputs.batch(batch) if outputs else contextlib.nullcontext():
                        adapter.forward(batch)
                except _Reached:
                    continue
                reached = len(captured[-1])
                raise UserError(f"tower {tower.name}: the model's forward never reached {blocks[reached].name} "
                                f"(block {reached} of {len(tower.blocks)}), so what it hands each block cannot be "
                                f"captured; this model cannot be walked block by block")
    finally:
        for handle in handles:
            handle.remove()
    return captured


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
    """Run the block over every cached input observing its matrices' inputs, which feed each
    matrix's statistics from the real tokens of each input (its stream's mask; pads never enter),
    or with `pads` from every token.

    Matrices handed the very same input tensor (q, k and v; gate and up) share one statistics
    object, so it is accumulated and stored once (a SparseGPT Hessian is cols x cols).
    """
    stats: dict[PrunableMatrix, InputStats] = {}
    # this batch's inputs so far and their statistics; holding the tensors keeps them alive, so
    # identity can't be confused by a freed tensor's memory being reused within the forward
    seen: list[tuple[torch.Tensor, InputStats]] = []
    current: list[BlockInput] = []

    def observe(m: PrunableMatrix, x: torch.Tensor, _output: Any) -> None:
        same = next((st for t, st in seen if t is x), None)
        if m not in stats:
            stats[m] = same or new_stats(m.shape[1], device)
        if same is None:
            seen.append((x, stats[m]))
            stats[m].add(*real_tokens(m, x, {} if pads else current[0].masks))
        elif same is not stats[m]:
            raise RuntimeError(f"{m.name}: its input was shared differently in an earlier batch")

    try:
        with observing_matrices(block.matrices, observe):
            for inp in inputs:
                seen.clear()
                current[:] = [inp]
                tower.run_block(block, inp)
    finally:
        seen.clear()
    return {m: stats[m] for m in block.matrices}


def walk_tower(
    adapter: ModelAdapter,
    tower: Tower,
    batches: list[Batch],
    device: torch.device,
    offload: bool = False,
    description: str = "",
    after: Callable[[Block, list[BlockInput]], None] | None = None,
    outputs: TowerOutputs | None = None,
) -> Iterator[tuple[Block, list[BlockInput]]]:
    """Yield each block of a tower with its inputs over all calibration batches.

    The inputs of block 0 come from running the model (other towers served from `outputs`, if
    given, as in capture_inputs); after the consumer is done with a block
    (it may have pruned it), the block is re-run to turn its inputs into the next block's, which
    `after(block, outputs)` may inspect.
    """
    captured = capture_arguments(adapter, tower, batches, outputs=outputs)
    inputs = [move(per_block[0], device) for per_block in captured]
    # later blocks' own arguments only: their captured hidden states are block 0's, not kept alive
    arguments = [[(inp.args, inp.kwargs) for inp in per_block[1:]] for per_block in captured]
    del captured
    for index, block in enumerate(track(tower.blocks, description or tower.name, total=len(tower.blocks))):
        home = next(block.module.parameters()).device
        if offload:
            block.module.to(device)
        yield block, inputs
        for i, inp in enumerate(inputs):
            if index + 1 < len(tower.blocks):  # the next block's own arguments, this block's output
                args, kwargs = arguments[i][index]
                nxt = BlockInput(inp.hidden, move(args, device), move(kwargs, device), inp.masks, inp.sizes)
            else:
                nxt = inp
            inputs[i] = tower.next_input(tower.run_block(block, inp), nxt)
        if after is not None:
            after(block, inputs)
        if offload:
            block.module.to(home)
