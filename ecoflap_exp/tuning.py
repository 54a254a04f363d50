"""A run's fine-tuning step (finetune=masked|iterative) after its one-shot prune: the intrinsic
dimensions it scales by (finetune.use_id), the training on its split (or the calibration samples),
and the verification of the weights it leaves."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.finetune.trainer import FineTuning
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.oneshot import Calibration, OneShot, Stage, Target
from ecoflap_exp.pruning.engine import MatrixReport
from ecoflap_exp.pruning.verify import verify

console = Console()


@dataclass
class Tuned:
    """The fine-tuning's record part (`info`) and the pruning it leaves: plan, reports, achieved."""

    info: dict[str, Any]
    plan: dict[str, float]
    reports: list[MatrixReport]
    achieved: dict[str, Any]


def intrinsic_dims(finetune: FineTuning, adapter: ModelAdapter, calibration: Calibration) -> dict[str, Any]:
    """The ID scorer's measurements (intrinsic_dim, id_points, id_samples) that finetune.use_id
    scales each matrix's importance by."""
    finetune.id.scores(adapter, calibration.batches, calibration.extended or calibration.batches)
    return {key: finetune.id.info[key] for key in ("intrinsic_dim", "id_points", "id_samples")}


def fine_tune(finetune: FineTuning, calib: CalibrationSource, adapter: ModelAdapter, pruned: OneShot, target: Target,
              checkpoints: Path, id_info: dict[str, Any], exact: bool, stage: Stage) -> Tuned:
    """Train on the fine-tuning's split, or on the calibration samples when none is configured (the
    record says which; checkpoints under `checkpoints`), then verify the weights: iterative pruning's
    final masks become the plan, and kept weights training left at exactly zero are allowed."""
    with stage("finetune"):
        if finetune.train is not None:
            samples, augment = finetune.train.samples(), finetune.train.augment == "train"
            trained_on = f"training split {finetune.train.describe()}"
        else:
            samples, augment = calib.samples(adapter, calib.num_samples), calib.augment == "train"
            trained_on = (f"calibration samples ({type(calib).__name__}, {len(samples)}): no training split is "
                          f"configured (finetune.train is null)")
            console.print(f"[yellow]fine-tuning on the {len(samples)} calibration samples[/]: no training split is "
                          f"configured (set finetune.train, e.g. /train@finetune.train: coco_karpathy)")
        ids = dict(id_info["intrinsic_dim"]) if id_info else None
        outcome = finetune.run(adapter, samples, augment, checkpoints, target.sparsity, ids, trained_on)
    outcome.info.update(oneshot_sparsity=pruned.achieved["overall"], **id_info)
    plan, pruned_plan, reports = pruned.plan, pruned.pruned_plan, pruned.reports
    if outcome.pruned is not None:
        plan, reports = iterative_plan(adapter, outcome.pruned)
        pruned_plan = plan
    reports, outcome.info["zeroed_by_training"] = zeroed_in_training(adapter, reports)
    with stage("verify"):
        achieved = verify(adapter, pruned_plan or dict.fromkeys((b.name for b in adapter.blocks()), 0.0), target.nm,
                          reports, exact=outcome.pruned is not None or exact,
                          overall=target.sparsity if outcome.pruned is not None else None,
                          others=True)  # the training steps wrote every trainable parameter
    return Tuned(outcome.info, plan, reports, achieved)


def zeroed_in_training(adapter: ModelAdapter, reports: list[MatrixReport]) -> tuple[list[MatrixReport], int]:
    """The reports with their allowance of other zeros widened by the kept weights training left at
    exactly 0.0 (an AdamW step can land one there: 1 of 1.9M in a BLIP ViT fc2 over 4 steps; a weight
    with no gradient stays at its 0 through iterative masks), and how many those are; verify still
    holds every matrix to at least its pruned count."""
    zeros = {m.name: m.zeros() for m in adapter.matrices()}
    widened, total = [], 0
    for r in reports:
        extra = max(0, zeros[r.name] - r.pruned - r.zeros_before)
        total += extra
        widened.append(replace(r, zeros_before=r.zeros_before + extra))
    return widened, total


def iterative_plan(adapter: ModelAdapter, pruned: dict[str, int]) -> tuple[dict[str, float], list[MatrixReport]]:
    """The per-matrix plan iterative pruning arrived at (its final mask's counts) and its reports,
    which the verify step holds the weights to."""
    plan: dict[str, float] = {}
    reports = []
    for tower in adapter.towers():
        for block in tower.blocks:
            for m in block.matrices:
                rows, cols = m.shape
                plan[m.name] = pruned[m.name] / m.numel
                reports.append(MatrixReport(m.name, block.name, tower.name, rows, cols, plan[m.name], pruned[m.name],
                                            0, None))
    return plan, reports
