"""The pruning core: the validated target, the method's checks and the one-shot pass (score ->
allocate -> engine -> verify) that the command line's runner and the Python API both run, so
both check and compute the same thing."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches, settled
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Plan, Redraw
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.engine import MatrixReport, SequentialEngine
from ecoflap_exp.pruning.masks import NM, check_nm_fits, check_sparsity, nm_sparsity, parse_nm
from ecoflap_exp.pruning.verify import finite, verify
from ecoflap_exp.scoring.base import BlockScorer
from ecoflap_exp.scoring.sketches import weight_sketches
from ecoflap_exp.tower_outputs import DEFAULT_BUDGET_GB, TowerOutputs

#: a step's timer: `with stage("score"): ...` (the runner's records each step's time and memory)
Stage = Callable[[str], contextlib.AbstractContextManager]


def untimed(_: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Target:
    """What a prune must reach: the fraction of prunable weights removed, the allocation's ceiling
    per group, and the N:M pattern (which fixes the fraction)."""

    sparsity: float
    max_sparsity: float
    nm: NM | None = None

    @classmethod
    def of(cls, sparsity: float | None, nm: str | None = None, max_sparsity: float | None = None,
           max_sparsity_delta: float = 0.1) -> Target:
        """The target, checked: sparsity in [0, 1) (0.5 when left out, N:M's own with a pattern, where
        another value is an error), the ceiling sparsity + max_sparsity_delta unless given, in
        [sparsity, 1]."""
        pattern = parse_nm(nm)
        if pattern is not None:
            value = nm_sparsity(pattern, None if sparsity is None else check_sparsity(sparsity))
        else:
            value = check_sparsity(0.5 if sparsity is None else sparsity)
        ceiling = min(value + max_sparsity_delta, 1.0) if max_sparsity is None else max_sparsity
        if not value <= ceiling <= 1:
            raise UserError(f"max_sparsity={ceiling} must lie in [sparsity={value}, 1]")
        return cls(value, float(ceiling), pattern)

    def as_record(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "max_sparsity": self.max_sparsity, "nm": str(self.nm) if self.nm else None}


@dataclass
class Method:
    """A pruning method: block scorer, allocation and local pruner."""

    scorer: BlockScorer
    allocation: Allocation
    pruner: LocalPruner

    @property
    def name(self) -> str:
        """As the papers name it: `wanda`, `ecoflap-zeroth+wanda`, `id-global-wanda+wanda`."""
        choice = "-".join(part for part in (self.scorer.name, self.allocation.name) if part)
        return f"{choice}+{self.pruner.name}" if choice else self.pruner.name

    def check(self, target: Target) -> None:
        """UserError when the method cannot reach the target: a scorer that plans block sparsities
        under an N:M pattern, or an allocation that would ignore the scores."""
        if target.nm is not None and self.scorer.non_uniform:
            raise UserError(f"nm={target.nm} fixes every matrix at {target.sparsity}; use scorer=uniform with N:M")
        if self.scorer.non_uniform and not self.allocation.reads_scores:
            raise UserError(f"allocation={self.allocation.name} plans without block scores (use_id=false); use "
                            f"scorer=uniform for the plain global baseline, or allocation.use_id=true")

    def check_samples(self, num_samples: int, batch_size: int) -> None:
        """UserError when the pruner's calibration samples are too few for the scorer, or a sample
        count the scorer sets is not a whole number of batches."""
        scorer = self.scorer
        scorer.check_samples(num_samples)
        for key, count in scorer.sample_counts().items():
            if count < batch_size or count % batch_size:
                raise UserError(f"{key}={count} is not a whole number of calibration batches (calib.batch_size="
                                f"{batch_size}); use a multiple of {batch_size}")

    @property
    def exact(self) -> bool:
        """Whether the pruner counts exactly (verify then holds every matrix to its planned count)."""
        return self.pruner.count == "exact"


def check_weights(adapter: ModelAdapter) -> None:
    """UserError for a model that cannot be pruned as it is: weights on the meta device (never
    loaded) or NaN/inf weights (a broken checkpoint)."""
    params = list(adapter.model.named_parameters())
    meta = [name for name, p in params if p.is_meta]
    if meta:
        raise UserError(f"{len(meta)} parameters ({', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''}) are on the "
                        f"meta device: the model was never loaded; load its weights (or materialise it) first")
    bad = [name for name, p in params if not finite(p)]
    if bad:
        raise UserError(f"the loaded model holds NaN/inf weights in {len(bad)} parameters ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}): the checkpoint is broken; re-download or re-save it")


def check_fits(adapter: ModelAdapter, nm: NM | None) -> None:
    """Every matrix's input width is a multiple of the N:M pattern's M."""
    for m in adapter.matrices():
        check_nm_fits(m.name, m.shape[1], nm)


@dataclass(frozen=True)
class Selection:
    """Which matrices are pruned and how much, by regexes over matrix names (as llm-compressor's):
    per-matrix sparsities (first match wins, unmatched kept dense), `targets` (only these) and
    `ignore` (never these)."""

    per_matrix: dict[str, float] | None = None
    targets: Sequence[str] | None = None
    ignore: Sequence[str] = ()

    @property
    def chooses(self) -> bool:
        return self.per_matrix is not None or self.targets is not None or bool(self.ignore)

    def check(self, adapter: ModelAdapter) -> None:
        """UserError when the regexes leave no matrix to prune (the model would stay dense and be
        reported as pruned)."""
        for pattern, p in (self.per_matrix or {}).items():
            check_sparsity(p, f"sparsity[{pattern!r}]")
        names = [m.name for m in adapter.matrices()]
        kept = [n for n in names if not any(re.search(i, n) for i in self.ignore)]
        hint = f"(the model would stay dense); matrix names look like {names[0]!r}"
        if not kept:
            raise UserError(f"ignore={list(self.ignore)} matches every matrix {hint}")
        for what, patterns in (("sparsity", self.per_matrix), ("targets", self.targets)):
            if patterns is not None and not any(re.search(p, n) for p in patterns for n in kept):
                raise UserError(f"{what}={patterns} matches no matrix left to prune {hint}")

    def applied(self, plan: Plan, adapter: ModelAdapter) -> Plan:
        """The plan with the per-matrix sparsities set and the matrices not chosen at 0."""
        out = dict(plan)
        for m in adapter.matrices():
            if self.per_matrix is not None:
                out[m.name] = next((p for pattern, p in self.per_matrix.items() if re.search(pattern, m.name)), 0.0)
            chosen = (self.targets is None or any(re.search(t, m.name) for t in self.targets)) and not any(
                re.search(i, m.name) for i in self.ignore)
            if not chosen:
                out[m.name] = 0.0
        return out


@dataclass
class Scored:
    """What does not depend on the sparsity (a sweep's points share it): the block scores, what the
    scorer reports beside them, and the weight sketches a global allocation ranks."""

    scores: dict[str, float]
    info: dict[str, Any]
    sketches: Sketches | None


class ScoreMemo(Protocol):
    """Where scores computed for one point are kept for the next (the runner's score cache)."""

    def load(self) -> Scored | None: ...

    def save(self, scored: Scored) -> None: ...


@dataclass
class Calibration:
    """The calibration batches of a prune: the pruner's, those drawn on for a scorer that reads
    more (`extended`, else the same), and fresh draws per pass (`redraw`, else the same batches)."""

    batches: list[Batch]
    extended: list[Batch] | None = None
    redraw: Redraw | None = None


@dataclass
class OneShot:
    """What a one-shot prune did: the scores (and whether they came from the memo), the allocation's
    plan (empty for a dense point), the plan as pruned (`pruned_plan`: with exact counting, each
    matrix's share of the target's exact count), one report per pruned matrix and the achieved
    sparsity."""

    scored: Scored
    plan: Plan
    pruned_plan: Plan
    reports: list[MatrixReport]
    achieved: dict[str, Any]
    reused: bool = False


def score(adapter: ModelAdapter, method: Method, calibration: Calibration, outputs: TowerOutputs | None = None,
          memo: ScoreMemo | None = None) -> tuple[Scored, bool]:
    """The block scores and sketches, from the memo when it holds them, and whether they did. A
    uniform scorer with nothing to sketch computes nothing worth keeping."""
    allocation = method.allocation
    worth = method.scorer.non_uniform or bool(allocation.sketch_quantiles)
    if memo is not None and worth and (hit := memo.load()) is not None:
        return hit, True
    scores = method.scorer.scores(adapter, calibration.batches, calibration.extended or calibration.batches,
                                  calibration.redraw, outputs)
    sketches = (weight_sketches(adapter, calibration.batches, allocation.sketch_score, allocation.sketch_quantiles,
                                 outputs)
                if allocation.sketch_quantiles else None)
    scored = Scored(scores, dict(method.scorer.info), sketches)
    if memo is not None and worth:
        memo.save(scored)
    return scored, False


def prune_with(adapter: ModelAdapter, calibration: Calibration, method: Method, target: Target, *,
               selection: Selection = Selection(), cache_gb: float = DEFAULT_BUDGET_GB,
               device: torch.device | None = None, offload: bool = False, pads_in_stats: bool = False,
               memo: ScoreMemo | None = None, stage: Stage = untimed) -> OneShot:
    """Prune the adapter's model in place to the target: score, allocate, prune block by block,
    verify. A target of 0 with no selection prunes nothing and verifies the weights as they are."""
    dense = target.sparsity == 0 and not selection.chooses
    # exact counting over the whole model: the matrices' counts add up to exactly the target
    whole = method.exact and target.nm is None and not selection.chooses and not dense
    plan: Plan = {}
    pruned_plan: Plan = {}
    reports: list[MatrixReport] = []
    scored, reused = Scored({}, {}, None), False
    if not dense:
        groups = Groups.of(adapter)
        with TowerOutputs(adapter, cache_gb) as outputs:  # shared by scoring and the engine's input capture
            if selection.per_matrix is None:
                with stage("score"):
                    scored, reused = score(adapter, method, calibration, outputs, memo)
                with stage("allocate"):
                    plan = method.allocation.plan(scored.scores, groups, target.sparsity, target.max_sparsity,
                                                  scored.sketches)
            else:
                plan = dict.fromkeys((b.name for b in adapter.blocks()), 0.0)
            if selection.chooses:
                plan = selection.applied(plan, adapter)
            pruned_plan = settled(plan, groups, target.sparsity) if whole else plan
            with stage("prune"):
                engine = SequentialEngine(adapter, method.pruner, pruned_plan, target.nm, device or adapter.device,
                                          offload, pads_in_stats, outputs=outputs)
                reports = engine.run(calibration.batches, calibration.redraw)
    with stage("verify"):
        # others=False: the pruners wrote only the matrices verify reads; the rest is as the load's
        # check_weights saw it (the runner and the API run it before every prune)
        achieved = verify(adapter, pruned_plan or dict.fromkeys((b.name for b in adapter.blocks()), 0.0), target.nm,
                          reports, exact=method.exact, overall=target.sparsity if whole else None, others=False)
    return OneShot(scored, plan, pruned_plan, reports, achieved, reused)
