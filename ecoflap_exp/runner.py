"""One run, start to end: validate, load, calibrate, score, allocate, prune, verify, evaluate,
record (DESIGN.md, "The run")."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import platform
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

import ecoflap_exp
from ecoflap_exp.allocation.base import Allocation, Groups
from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.engine import MatrixReport, SequentialEngine
from ecoflap_exp.pruning.masks import NM, parse_nm
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.scoring.base import BlockScorer, first_samples
from ecoflap_exp.scoring.sketches import weight_sketches
from ecoflap_exp.tracking.store import ResultsStore, run_id

log = logging.getLogger(__name__)
console = Console()


@dataclass
class Target:
    """The validated pruning target of a run."""

    sparsity: float
    max_sparsity: float
    nm: NM | None


def validate(cfg: DictConfig) -> Target:
    """Every check that needs no weights, so bad values fail before anything heavy loads."""
    nm = parse_nm(cfg.nm)
    sparsity = nm.sparsity if nm is not None else cfg.sparsity
    if not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise UserError(f"sparsity={cfg.sparsity} is outside [0, 1); pass a fraction such as sparsity=0.5")
    max_sparsity = cfg.max_sparsity
    if max_sparsity is None:
        max_sparsity = min(sparsity + cfg.max_sparsity_delta, 1.0)
    if not sparsity <= max_sparsity <= 1:
        raise UserError(f"max_sparsity={max_sparsity} must lie in [sparsity={sparsity}, 1]")
    if not cfg.model.get("name"):
        raise UserError("the model config has no `name` (the short name records and tables use, e.g. name: my_llama); "
                        "add one to it")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise UserError(f"device={cfg.device!r} is unknown; use auto, cpu or cuda[:N]")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    return Target(float(sparsity), float(max_sparsity), nm)


def build(node: DictConfig) -> Any:
    """hydra.utils.instantiate, letting a plugin's UserError through as itself (Hydra wraps every
    error of a constructor in its own exception type, which would bury the message)."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)
    peak_gpu_gb: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        if torch.cuda.is_available():
            self.peak_gpu_gb[stage] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def versions() -> dict[str, str]:
    import hydra
    import transformers

    return {
        "ecoflap_exp": ecoflap_exp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hydra": hydra.__version__,
    }


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def check_finite(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise UserError(f"evaluation gave non-finite metrics {bad}; the pruned model is broken")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured experiment point and return its record (already in the store)."""
    target = validate(cfg)
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise UserError(f"the config does not resolve at {getattr(err, 'full_key', '?')}: {str(err).splitlines()[0]} "
                        f"(do the chosen model, calib and suite fit together?)") from None
    store = ResultsStore(cfg.paths.results_dir)
    rid = run_id(config)
    if not cfg.force and (done := store.finished(rid)):
        console.print(f"[green]run {rid} already finished[/] ({store.path(rid)}); skipped (force=true reruns it)")
        return done
    record: dict[str, Any] = {"id": rid, "status": "running", "model": cfg.model.name, "config": config,
                              "started": dt.datetime.now().isoformat(timespec="seconds"),
                              "versions": versions(), "git_commit": git_commit()}
    try:
        plugins = Plugins.build(cfg)
        record.update(method=plugins.method(target), scorer=plugins.scorer.name)
        record.update(execute(cfg, target, rid, plugins))
        record["status"] = "ok"
    except BaseException as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        record["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        record["peak_rss_gb"] = peak_rss_gb()
        store.write(record)
        if cfg.get("logger"):
            log_externally(cfg.logger, record)
    print_summary(record)
    return record


def check_fit(adapter: ModelAdapter, calib: CalibrationSource, evals: dict[str, Evaluation]) -> None:
    """The calibration samples and every eval work with this kind of model (before heavy work)."""
    if calib.kind not in adapter.sample_kinds:
        raise UserError(f"calib ({type(calib).__name__}) gives {calib.kind} but {type(adapter).__name__} calibrates "
                        f"on {', '.join(adapter.sample_kinds)}; choose a calib made for this model")
    if calib.augment == "train" and not adapter.has_train_augmentation:
        raise UserError(f"calib.augment=train but {type(adapter).__name__} defines no training augmentation of its "
                        f"images; use calib.augment=eval")
    adapter.towers()  # checks model.prune_towers
    for name, ev in evals.items():
        model, missing = ev.missing(adapter)
        if missing:
            raise UserError(f"evals.{name} ({type(ev).__name__}) needs a model with {' and '.join(missing)}, which "
                            f"{model} lacks; choose a suite made for this model")


def plan_keys(adapter: ModelAdapter) -> list[str]:
    return [block.name for block in adapter.blocks()]


def comparison_groups(pruner: LocalPruner, reports: list[MatrixReport]) -> dict[str, dict[str, str]]:
    """`<pruner>_group`: the comparison group each pruned tower used (e.g. wanda_group), for
    pruners that compare within groups."""
    groups = {r.tower: r.group for r in reports if r.group is not None}
    return {f"{pruner.name}_group": groups} if groups else {}


def save(adapter: ModelAdapter, folder: Path, record: dict[str, Any]) -> str:
    """The pruned model in its library's own format plus a JSON of the plan and what was reached."""
    folder.mkdir(parents=True, exist_ok=True)
    adapter.save(folder)
    keys = ("target", "scores", "plan", "achieved")
    (folder / "pruning.json").write_text(json.dumps({k: record[k] for k in keys}, indent=1))
    return str(folder)


def log_externally(logger_cfg: DictConfig, record: dict[str, Any]) -> None:
    """Hand the record to the configured logger; its failure never costs the run (the record is
    already in the store)."""
    try:
        build(logger_cfg).log(record)
    except Exception as err:  # noqa: BLE001 - any logger failure is reported, never fatal
        log.warning("logging run %s externally failed (%s: %s); its record is in the store",
                    record["id"], type(err).__name__, err)


@dataclass
class Plugins:
    """Everything a run is configured with but the model, built (and so checked) before any
    weights load."""

    calib: CalibrationSource
    scorer: BlockScorer
    allocation: Allocation
    pruner: LocalPruner
    evals: dict[str, Evaluation]

    @classmethod
    def build(cls, cfg: DictConfig) -> Plugins:
        return cls(build(cfg.calib), build(cfg.scorer), build(cfg.allocation), build(cfg.pruner),
                   {name: build(ev) for name, ev in cfg.evals.items()})

    def method(self, target: Target) -> str:
        """The method as the papers name it: `wanda`, `ecoflap-zeroth+wanda`, `id-global-wanda+wanda`,
        `owl+sparsegpt`; `dense` for an unpruned point."""
        if target.sparsity == 0:
            return "dense"
        choice = "-".join(part for part in (self.scorer.name, self.allocation.name) if part)
        return f"{choice}+{self.pruner.name}" if choice else self.pruner.name


def execute(cfg: DictConfig, target: Target, rid: str, plugins: Plugins) -> dict[str, Any]:
    timer = StageTimer()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    calib, scorer, allocation, pruner, evals = (plugins.calib, plugins.scorer, plugins.allocation, plugins.pruner,
                                                plugins.evals)
    if target.nm is not None and scorer.non_uniform:
        raise UserError(f"nm={target.nm} fixes every matrix at {target.sparsity}; use scorer=uniform with N:M")
    if scorer.non_uniform and not allocation.reads_scores:
        raise UserError(f"allocation={allocation.name} plans without block scores (use_id=false); use scorer=uniform "
                        f"for the plain global baseline, or allocation.use_id=true")
    for ev in evals.values():
        ev.check_data()  # a missing or malformed benchmark file stops the run before anything heavy
    with timer("load"):
        adapter: ModelAdapter = build(cfg.model)
        if not cfg.offload:
            adapter.to(device)
    check_fit(adapter, calib, evals)
    plan: dict[str, float] = {}
    scores: dict[str, float] = {}
    reports = []
    if target.sparsity > 0:
        with timer("calibrate"):
            extended = calib.batches(adapter, scorer.samples_needed)  # the ID paper's 2000, say
            batches = first_samples(extended, calib.num_samples)
        with timer("score"):
            scores = scorer.scores(adapter, batches, extended)
            sketches = (weight_sketches(adapter, batches, allocation.sketch_score, allocation.sketch_quantiles)
                        if allocation.sketch_quantiles else None)
        with timer("allocate"):
            plan = allocation.plan(scores, Groups.of(adapter), target.sparsity, target.max_sparsity, sketches)
        with timer("prune"):
            engine = SequentialEngine(adapter, pruner, plan, target.nm, device, cfg.offload)
            reports = engine.run(batches)
        del batches, extended
    with timer("verify"):
        achieved = verify(adapter, plan or dict.fromkeys(plan_keys(adapter), 0.0), target.nm, reports,
                          exact=pruner.count == "exact")
    if cfg.offload:
        adapter.to(device)
    metrics: dict[str, float] = {}
    with timer("eval"):
        for name, ev in evals.items():
            metrics.update({f"{ev.name or name}/{k}": v for k, v in ev.evaluate(adapter).items()})
    check_finite(metrics)
    eval_info = {name: dict(ev.info) for name, ev in evals.items() if ev.info}
    result = {
        "target": {"sparsity": target.sparsity, "max_sparsity": target.max_sparsity,
                   "nm": str(target.nm) if target.nm else None},
        "scores": scores,
        "scorer_info": dict(scorer.info),
        "plan": plan,
        "achieved": achieved,
        "matrices": [r.as_dict() for r in reports],
        **comparison_groups(pruner, reports),
        "metrics": metrics,
        "eval_info": eval_info,
        "timings_s": timer.seconds,
        "peak_gpu_gb": timer.peak_gpu_gb,
    }
    if cfg.save_model:
        result["saved_model"] = save(adapter, Path(cfg.paths.models_dir) / rid, result)
    return result


def print_summary(record: dict[str, Any]) -> None:
    table = Table(title=f"run {record['id']}", show_header=False)
    table.add_row("model", record["model"])
    table.add_row("method", record["method"])
    target = record["target"]
    table.add_row("target sparsity", f"{target['sparsity']:.4f}" + (f" ({target['nm']})" if target["nm"] else ""))
    table.add_row("achieved sparsity", f"{record['achieved']['overall']:.4f} of "
                  f"{record['achieved']['prunable_params']:,} prunable weights")
    if record["plan"]:
        values = list(record["plan"].values())
        table.add_row("group sparsity range", f"{min(values):.4f} .. {max(values):.4f}")
    for name, value in record["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in record["timings_s"].items()))
    memory = f"peak RSS {record['peak_rss_gb']:.2f} GB"
    if record["peak_gpu_gb"]:
        memory += f", peak GPU {max(record['peak_gpu_gb'].values()):.2f} GB"
    table.add_row("memory", memory)
    console.print(table)
