"""The sequential block-by-block pruning engine.

Per tower: run the model once per calibration batch up to the tower's first block and keep that
block's inputs (hidden states and keyword arguments, and the tower's token masks of that batch).
Then, block by block: hook the block's prunable matrices and run it over all cached inputs to
collect the local pruner's statistics from real tokens only, prune every matrix to its planned
sparsity, and re-run the pruned block to produce the inputs of the next block. Beyond the model,
memory holds one block's inputs and one block's statistics. With `offload`, the model stays where
it is (CPU) and each block visits `device` in turn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, Group, PrunableMatrix, Tower
from ecoflap_exp.progress import track
from ecoflap_exp.pruning.base import InputStats, LocalPruner
from ecoflap_exp.pruning.masks import NM, check_nm_fits

Plan = dict[str, float]


@dataclass
class MatrixReport:
    name: str
    block: str
    tower: str
    rows: int
    cols: int
    planned_sparsity: float
    pruned: int
    zeros_before: int
    group: Group | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def planned_sparsity(plan: Plan, block: Block, matrix: PrunableMatrix) -> float:
    """A plan maps block names to sparsities; a matrix name in the plan overrides its block."""
    return plan[matrix.name] if matrix.name in plan else plan[block.name]


def move(obj: Any, device: torch.device) -> Any:
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
    inputs: list[BlockInput] = []
    masks: dict[str, torch.Tensor] = {}  # the token masks of the batch being run

    def catch(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inp = tower.split_input(args, kwargs)
        inp.masks = masks
        inputs.append(inp)
        raise _Reached

    handle = tower.blocks[0].module.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            masks = tower.token_masks(batch)
            try:
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
    tower: Tower, block: Block, inputs: list[BlockInput], pruner: LocalPruner, device: torch.device
) -> dict[PrunableMatrix, InputStats | None]:
    """Run the block over every cached input with hooks that feed each matrix's statistics, from
    the real tokens of each input (its stream's mask; pads never enter).

    Matrices handed the very same input tensor (q, k and v; gate and up) share one statistics
    object, so it is accumulated and stored once (a SparseGPT Hessian is cols x cols).
    """
    if not pruner.needs_inputs:
        return dict.fromkeys(block.matrices)
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
                stats[m] = same or pruner.new_stats(m.shape[1], device)
            if same is None:
                seen.append((x, stats[m]))
                stats[m].add(*real_tokens(m, x, current[0].masks))
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
    return {m: stats.get(m) for m in block.matrices}


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


class SequentialEngine:
    def __init__(
        self,
        adapter: ModelAdapter,
        pruner: LocalPruner,
        plan: Plan,
        nm: NM | None = None,
        device: torch.device | str | None = None,
        offload: bool = False,
    ):
        self.adapter = adapter
        self.pruner = pruner
        self.plan = plan
        self.nm = nm
        self.device = torch.device(device) if device is not None else adapter.device
        self.offload = offload

    @torch.no_grad()
    def run(self, batches: list[Batch]) -> list[MatrixReport]:
        self.adapter.model.eval()
        towers = self.adapter.towers()
        for tower in towers:
            for block in tower.blocks:
                for m in block.matrices:
                    check_nm_fits(m.name, m.shape[1], self.nm)
        reports: list[MatrixReport] = []
        for tower in towers:
            for block, inputs in walk_tower(self.adapter, tower, batches, self.device, self.offload,
                                            f"pruning {tower.name}"):
                reports += self.prune_block(tower, block, inputs)
        return reports

    def prune_block(self, tower: Tower, block: Block, inputs: list[BlockInput]) -> list[MatrixReport]:
        stats = collect_stats(tower, block, inputs, self.pruner, self.device)
        group = self.pruner.group_for(tower)
        reports = []
        for m in block.matrices:
            sparsity = planned_sparsity(self.plan, block, m)
            rows, cols = m.shape
            weight = m.weight
            self.pruner.prepare(weight, stats[m])
            zeros_before = int((weight == 0).sum())
            mask = self.pruner.prune(weight, stats[m], sparsity, self.nm, group)
            reports.append(MatrixReport(m.name, block.name, tower.name, rows, cols, sparsity, int(mask.sum()),
                                        zeros_before, group))
            stats[m] = None  # drop this matrix's reference (shared statistics live until their last user)
        return reports
