"""The sequential block-by-block pruning engine.

Per tower, along the shared walker (ecoflap_exp.walk): block by block, collect the local pruner's
input statistics from real tokens only, prune every matrix to its planned sparsity, and let the
walker re-run the pruned block to produce the inputs of the next block. Beyond the model, memory
holds one block's inputs and one block's statistics. With `offload`, the model stays where it is
(CPU) and each block visits `device` in turn. The towers a tower's capture reads (or that sit beside
it) are served from the TowerOutputs the engine is handed, which learns of each pruned tower; one
handed none keeps its own for the run.
"""

from __future__ import annotations

import torch

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, Plan, PrunableMatrix, Redraw, Tower
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.masks import NM, check_nm_fits
from ecoflap_exp.record import MatrixReport
from ecoflap_exp.tower_outputs import DEFAULT_BUDGET_GB, TowerOutputs
from ecoflap_exp.walk import collect_stats, walk_tower


def planned_sparsity(plan: Plan, block: Block, matrix: PrunableMatrix) -> float:
    """A plan maps block names to sparsities; a matrix name in the plan overrides its block."""
    return plan[matrix.name] if matrix.name in plan else plan[block.name]


class SequentialEngine:
    def __init__(
        self,
        adapter: ModelAdapter,
        pruner: LocalPruner,
        plan: Plan,
        nm: NM | None = None,
        device: torch.device | str | None = None,
        offload: bool = False,
        pads_in_stats: bool = False,
        outputs: TowerOutputs | None = None,
    ):
        self.adapter = adapter
        self.pads_in_stats = pads_in_stats
        self.pruner = pruner
        self.plan = plan
        self.nm = nm
        self.device = torch.device(device) if device is not None else adapter.device
        self.offload = offload
        #: the run's stored tower outputs (scoring may have filled them); None: the engine's own per run
        self.outputs = outputs

    @torch.no_grad()
    def run(self, batches: list[Batch], redraw: Redraw | None = None) -> list[MatrixReport]:
        """Prune every tower along the walker; with `redraw` (calib.redraw) each tower's walk starts
        from fresh batches, as each of the official code's tower passes iterates its DataLoader anew."""
        self.adapter.model.eval()
        for tower in self.adapter.towers():
            for block in tower.blocks:
                for m in block.matrices:
                    check_nm_fits(m.name, m.shape[1], self.nm)
        if self.outputs is not None:
            return self.prune_towers(batches, redraw, self.outputs)
        with TowerOutputs(self.adapter, DEFAULT_BUDGET_GB) as outputs:
            return self.prune_towers(batches, redraw, outputs)

    def prune_towers(self, batches: list[Batch], redraw: Redraw | None, outputs: TowerOutputs) -> list[MatrixReport]:
        reports: list[MatrixReport] = []
        for tower in self.adapter.towers():
            seen = redraw(f"prune/{tower.name}", None) if redraw else batches
            for block, inputs in walk_tower(self.adapter, tower, seen, self.device, self.offload,
                                            f"pruning {tower.name}", outputs=outputs):
                reports += self.prune_block(tower, block, inputs)
            outputs.changed(tower.name)
        return reports

    def prune_block(self, tower: Tower, block: Block, inputs: list[BlockInput]) -> list[MatrixReport]:
        stats = (collect_stats(tower, block, inputs, self.pruner.new_stats, self.device, self.pads_in_stats)
                 if self.pruner.needs_inputs else dict.fromkeys(block.matrices))
        group = self.pruner.group_for(tower)
        reports = []
        for m in block.matrices:
            sparsity = planned_sparsity(self.plan, block, m)
            rows, cols = m.shape
            weight = m.weight
            pruner = self.pruner.for_matrix(block, m)
            pruner.prepare(weight, stats[m])
            zeros_before = m.zeros()
            mask = pruner.prune(weight, stats[m], sparsity, self.nm, group)
            pruned = int(torch.count_nonzero(mask))  # a bool sum would widen the mask to int64
            reports.append(MatrixReport(m.name, block.name, tower.name, rows, cols, sparsity, pruned, zeros_before,
                                        group))
            stats[m] = None  # drop this matrix's reference (shared statistics live until their last user)
        return reports
