"""One run, start to end: validate, load, calibrate, score, allocate, prune, verify, evaluate,
record (docs/ARCHITECTURE.md has the layout)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

import ecoflap_exp
from ecoflap_exp.allocation.base import Allocation, Groups, Sketches
from ecoflap_exp.api import build, check_weights, method_name, scores_for
from ecoflap_exp.config_schema import check_config
from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.finetune.trainer import FineTuning, Outcome
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Redraw
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.engine import MatrixReport, SequentialEngine
from ecoflap_exp.pruning.masks import NM, check_nm_fits, check_sparsity, nm_sparsity, parse_nm
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.results.records import LOADED_SPARSE
from ecoflap_exp.scoring.base import BlockScorer, first_samples
from ecoflap_exp.tower_outputs import tower_outputs
from ecoflap_exp.tracking.model_card import push_to_hub, write_extras
from ecoflap_exp.tracking.score_cache import ScoreCache, score_key
from ecoflap_exp.tracking.store import ResultsStore, run_id, write_atomically

log = logging.getLogger(__name__)
console = Console()


@dataclass
class Target:
    """The validated pruning target of a run."""

    sparsity: float
    max_sparsity: float
    nm: NM | None


def validate(cfg: DictConfig) -> Target:
    """Every check of the config's own values, so bad values fail before anything is built: each
    value against its type (config_schema), then the rules that tie values together."""
    check_config(cfg)
    nm = parse_nm(cfg.nm)
    sparsity = check_sparsity(cfg.sparsity)
    if nm is not None:
        nm_sparsity(nm, sparsity)
    max_sparsity = cfg.max_sparsity
    if max_sparsity is None:
        max_sparsity = min(sparsity + cfg.max_sparsity_delta, 1.0)
    if not sparsity <= max_sparsity <= 1:
        raise UserError(f"max_sparsity={max_sparsity} must lie in [sparsity={sparsity}, 1]")
    if not cfg.model.get("name"):
        raise UserError("the model config has no `name` (the short name records and tables use, e.g. name: my_llama); "
                        "add one to it")
    if cfg.push_to_hub and not cfg.save_model:
        raise UserError(f"push_to_hub={cfg.push_to_hub} uploads the saved model; add save_model=true")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise UserError(f"device={cfg.device!r} is unknown; use auto, cpu or cuda[:N]")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    return Target(float(sparsity), float(max_sparsity), nm)


def resolve_device(name: str) -> torch.device:
    """`auto`: cuda if available (under `accelerate launch`, this process's own GPU), else cpu."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def main_process() -> bool:
    """Whether this process records the run: the only one, or rank 0 of `accelerate launch`."""
    return int(os.environ.get("RANK", "0")) == 0


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


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one configured experiment point and return its record (already in the store), or None
    when another live process holds the point. Every check that needs no weights comes first; a
    UserError before the run's work (a bad value, a missing file or checkpoint, a model that does
    not fit its calib or suite) is a config error and leaves no record."""
    with config_errors():
        target = validate(cfg)
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as err:
            where, why = getattr(err, "full_key", "?"), str(err).splitlines()[0]
            raise UserError(f"the config does not resolve at {where}: {why} (do the chosen model, calib and suite "
                            f"fit together?)") from None
        store = ResultsStore(cfg.paths.results_dir)
        store.check_writable()
        rid = run_id(config)
        if not cfg.force and (done := store.finished(rid)):
            console.print(f"[green]run {rid} already finished[/] ({store.path(rid)}); skipped (force=true reruns it)")
            return done
        plugins = Plugins.build(cfg)
        preflight(cfg, target, plugins)
    with store.claim(rid) if main_process() else contextlib.nullcontext() as holder:
        if holder is not None:
            console.print(f"[yellow]run {rid} is being run by process {holder.get('pid')} on {holder.get('host')} "
                          f"(since {holder.get('since')})[/]; skipped here, its record will be in {store.path(rid)} "
                          f"(if that process is gone from another host, delete {store.root / (rid + '.claim')})")
            return None
        if not cfg.force and (done := store.finished(rid)):  # finished while this process was starting
            console.print(f"[green]run {rid} already finished[/] ({store.path(rid)}); skipped")
            return done
        timer = StageTimer()
        with config_errors():
            adapter = load(cfg, plugins, timer, target.nm)
        record: dict[str, Any] = {"id": rid, "status": "running", "model": cfg.model.name, "config": config,
                                  "method": plugins.method(target), "scorer": plugins.scorer.name,
                                  "started": dt.datetime.now().isoformat(timespec="seconds"),
                                  "versions": versions(), "git_commit": git_commit()}
        threads_before = torch.get_num_threads()
        set_threads(cfg.threads, adapter)
        try:
            record.update(execute(cfg, target, rid, plugins, adapter, timer, record))
            if target.sparsity == 0 and record["achieved"]["overall"] >= LOADED_SPARSE:
                record["method"] = "as-loaded"  # a pruned checkpoint evaluated as it is: not dense
            record["status"] = "ok"
        except KeyboardInterrupt as err:
            record.update(status="interrupted", error=type(err).__name__)
            raise
        except BaseException as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            torch.set_num_threads(threads_before)  # the caller's setting again (the API, a test session)
            record["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            record["peak_rss_gb"] = peak_rss_gb()
            unwritten = write_record(store, record) if main_process() else None
    if not main_process():
        return record
    if plugins.logger is not None:
        log_externally(plugins.logger, record)
    print_summary(record)
    if unwritten is not None:
        kept = keep_elsewhere(record)
        where = (f"the whole record is in {kept}: copy it to {store.path(rid)} once there is room, and the run "
                 f"counts as finished" if kept else "its metrics are printed above")
        if kept is None:
            print(json.dumps({"id": rid, "metrics": record["metrics"], "achieved": record["achieved"]["overall"]}),
                  file=sys.stderr)
        raise UserError(f"the run finished but its record could not be written to {store.path(rid)} ({unwritten}); "
                        f"{where}; free the disk (or fix the folder)")
    return record


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A UserError raised inside is a ConfigError: it came before the run's work."""
    try:
        yield
    except ConfigError:
        raise
    except UserError as err:
        raise ConfigError(str(err)) from None


def write_record(store: ResultsStore, record: dict[str, Any]) -> str | None:
    """Write the record; on failure say where it could not go and return why (None: written). A
    failure to write never hides the run's own error."""
    try:
        store.write(record)
    except OSError as err:
        reason = f"{type(err).__name__}: {err.strerror or err}"
        log.error("could not write the record of run %s to %s (%s)", record["id"], store.path(record["id"]), reason)
        return reason
    return None


def keep_elsewhere(record: dict[str, Any]) -> Path | None:
    """The record written where the store could not take it: the system's temporary folder, else
    the home folder (None if neither can)."""
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        path = folder / f"ecoflap-record-{record['id']}.json"
        with contextlib.suppress(OSError):
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=str)))
            return path
    return None


def preflight(cfg: DictConfig, target: Target, plugins: Plugins) -> None:
    """Every check the built plugins allow before any model loads: the method fits the target, the
    model class has what the calib and evals need, every checkpoint and dataset can be had, the
    calibration files read."""
    scorer, calib = plugins.scorer, plugins.calib
    if target.nm is not None and scorer.non_uniform:
        raise UserError(f"nm={target.nm} fixes every matrix at {target.sparsity}; use scorer=uniform with N:M")
    if scorer.non_uniform and not plugins.allocation.reads_scores:
        raise UserError(f"allocation={plugins.allocation.name} plans without block scores (use_id=false); use "
                        f"scorer=uniform for the plain global baseline, or allocation.use_id=true")
    scorer.check_samples(calib.num_samples)
    calib.check_count(max(scorer.samples_needed or 0, calib.num_samples))
    for key, count in scorer.sample_counts().items():
        if count < calib.batch_size or count % calib.batch_size:
            raise UserError(f"{key}={count} is not a whole number of calibration batches (calib.batch_size="
                            f"{calib.batch_size}); use a multiple of {calib.batch_size}")
    model_class = get_class(cfg.model._target_)
    check_fit(model_class, calib, plugins.evals)
    if (finetune := plugins.finetune) is not None:
        check_finetune(finetune, target, model_class, calib)
    model_class.check_checkpoints(cfg.model)
    for ev in plugins.evals.values():
        ev.check_checkpoints()
    for ev in plugins.evals.values():
        ev.check_data()  # a missing or malformed benchmark file stops the run here
    if target.sparsity > 0:  # last, as the dearest: the calibration images are decoded here
        calib.check_data(max(scorer.samples_needed or 0, calib.num_samples))


#: below this many parameters, threads=auto runs torch on one CPU thread: `make run` (the 1.8M-parameter
#: digits CLIP, 35 points) took 40.2 s with one thread and 45.0 s with torch's default 2 here
SMALL_MODEL_PARAMS = 100_000_000


def set_threads(threads: int | str, adapter: ModelAdapter) -> None:
    """torch's CPU threads for this run (restored after it): a number, or auto (one for a small model)."""
    if threads == "auto":
        if sum(p.numel() for p in adapter.model.parameters()) < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)
    else:
        torch.set_num_threads(int(threads))


def load(cfg: DictConfig, plugins: Plugins, timer: StageTimer, nm: NM | None) -> ModelAdapter:
    """The model, on its device, with finite weights, towers that fit model.prune_towers and
    matrices the N:M pattern fits (what only the loaded model can tell, still before a record)."""
    with timer("load"):
        adapter: ModelAdapter = build(cfg.model)
        if not cfg.offload:
            adapter.to(resolve_device(cfg.device))
    check_weights(adapter)
    for m in adapter.matrices():  # adapter.matrices() checks model.prune_towers
        check_nm_fits(m.name, m.shape[1], nm)
    return adapter


def check_fit(model_class: type[ModelAdapter], calib: CalibrationSource, evals: dict[str, Evaluation]) -> None:
    """The calibration samples and every eval work with this kind of model (checked on its class)."""
    check_samples_fit(calib, "calib", "calibrates on", model_class)
    for name, ev in evals.items():
        model, missing = ev.missing(model_class)
        if missing:
            raise UserError(f"evals.{name} ({type(ev).__name__}) needs a model with {' and '.join(missing)}, which "
                            f"{model} lacks; choose a suite made for this model")


def check_samples_fit(source: Any, key: str, verb: str, model_class: type[ModelAdapter]) -> None:
    """A calibration source or training split (config key `key`) gives samples the model takes, in a
    view it has."""
    if source.kind not in model_class.sample_kinds:
        raise UserError(f"{key} ({type(source).__name__}) gives {source.kind} but {model_class.__name__} {verb} "
                        f"{', '.join(model_class.sample_kinds)}; choose a {key} made for this model")
    if source.augment == "train" and not model_class.has_train_augmentation:
        raise UserError(f"{key}.augment=train but {model_class.__name__} defines no training augmentation of its "
                        f"images; use {key}.augment=eval")


def check_finetune(finetune: FineTuning, target: Target, model_class: type[ModelAdapter],
                   calib: CalibrationSource) -> None:
    """The fine-tuning fits the target and the model; its training split can be read."""
    if target.nm is not None:
        raise UserError(f"finetune={finetune.mode} with nm={target.nm}: fine-tuning keeps or prunes unstructured "
                        f"weights only; leave nm out")
    finetune.oneshot_sparsity(target.sparsity)
    if (split := finetune.train) is not None:
        check_samples_fit(split, "finetune.train", "trains on", model_class)
        split.check()
    if finetune.use_id:
        if getattr(finetune.id, "granularity", None) != "matrix":
            raise UserError("finetune.use_id=true multiplies each matrix's scores by its own ID; set "
                            "finetune.id.granularity=matrix")
        finetune.id.check_samples(calib.num_samples)
        calib.check_count(max(finetune.id.samples_needed or 0, calib.num_samples))


def plan_keys(adapter: ModelAdapter) -> list[str]:
    return [block.name for block in adapter.blocks()]


def comparison_groups(pruner: LocalPruner, reports: list[MatrixReport]) -> dict[str, dict[str, str]]:
    """`<pruner>_group`: the comparison group each pruned tower used (e.g. wanda_group), for
    pruners that compare within groups."""
    groups = {r.tower: r.group for r in reports if r.group is not None}
    return {f"{pruner.name}_group": groups} if groups else {}


def save(adapter: ModelAdapter, folder: Path, record: dict[str, Any]) -> str:
    """The pruned model in its library's own format, pruning.json and a model card."""
    folder.mkdir(parents=True, exist_ok=True)
    adapter.save(folder)
    hint = adapter.load_hint.format(path=str(folder), model_class=type(adapter.model).__name__)
    write_extras(folder, record, hint)
    return str(folder)


def log_externally(logger: Any, record: dict[str, Any]) -> None:
    """Hand the record to the configured logger; its failure never costs the run (the record is
    already in the store)."""
    try:
        logger.log(record)
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
    #: the external logger (logger=wandb), or None
    logger: Any = None
    #: the fine-tuning stage (finetune=masked, iterative), or None
    finetune: FineTuning | None = None

    @classmethod
    def build(cls, cfg: DictConfig) -> Plugins:
        evals = {name: build(ev) for name, ev in cfg.evals.items()}
        logger = build(cfg.logger) if cfg.get("logger") else None
        finetune = build(cfg.finetune) if cfg.get("finetune") else None
        return cls(build(cfg.calib), build(cfg.scorer), build(cfg.allocation), build(cfg.pruner), evals, logger,
                   finetune)

    def method(self, target: Target) -> str:
        """The method as the papers name it (`wanda`, `ecoflap-zeroth+wanda`, `owl+sparsegpt`), with the
        fine-tuning's part (`ecoflap-zeroth+wanda+masked-ft`, `iterative-platon-id`, after a one-shot
        start `wanda>iterative-taylor`); `dense` for an unpruned point."""
        oneshot = method_name(self.scorer, self.allocation, self.pruner)
        if self.finetune is not None:
            return self.finetune.method_name(oneshot, target.sparsity)
        return "dense" if target.sparsity == 0 else oneshot


def execute(cfg: DictConfig, target: Target, rid: str, plugins: Plugins, adapter: ModelAdapter,
            timer: StageTimer, provenance: dict[str, Any]) -> dict[str, Any]:
    """The run's work; `provenance` (model, method, config, versions, git commit) goes into a saved
    model's pruning.json and card."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    calib, scorer, allocation, pruner, evals = (plugins.calib, plugins.scorer, plugins.allocation, plugins.pruner,
                                                plugins.evals)
    plan: dict[str, float] = {}
    scores: dict[str, float] = {}
    scorer_info: dict[str, Any] = {}
    reused = False
    reports: list[MatrixReport] = []
    finetune = plugins.finetune
    oneshot = finetune.oneshot_sparsity(target.sparsity) if finetune is not None else target.sparsity
    use_id = finetune is not None and finetune.use_id
    batches: list = []
    extended: list = []
    if oneshot > 0 or use_id:
        with timer("calibrate"):
            needed = max(scorer.samples_needed or 0, (finetune.id.samples_needed or 0) if use_id else 0)
            extended = calib.batches(adapter, needed or None)  # the ID paper's 2000, say
            batches = first_samples(extended, calib.num_samples)
    redraw = calib.redrawing(adapter) if cfg.redraw_calibration and oneshot > 0 else None
    if oneshot > 0:
        ceiling = target.max_sparsity if oneshot == target.sparsity else min(oneshot + cfg.max_sparsity_delta, 1.0)
        with tower_outputs(adapter, cfg.cache_gb):  # shared by scoring and the engine's input capture
            with timer("score"):
                scores, scorer_info, sketches, reused = cached_scores(cfg, provenance["config"], adapter, batches,
                                                                       extended, plugins, redraw)
            with timer("allocate"):
                plan = allocation.plan(scores, Groups.of(adapter), oneshot, ceiling, sketches)
            with timer("prune"):
                reports = SequentialEngine(adapter, pruner, plan, target.nm, device, cfg.offload,
                                           cfg.pads_in_stats).run(batches, redraw)
    with timer("verify"):
        achieved = verify(adapter, plan or dict.fromkeys(plan_keys(adapter), 0.0), target.nm, reports,
                          exact=pruner.count == "exact")
    ids, id_info = None, {}
    if use_id:
        with timer("intrinsic_dim"):
            finetune.id.scores(adapter, batches, extended)
            id_info = {key: finetune.id.info[key] for key in ("intrinsic_dim", "id_points", "id_samples")}
            ids = dict(id_info["intrinsic_dim"])
    del batches, extended
    tuned = None
    if finetune is not None:
        oneshot_achieved = achieved["overall"]
        with timer("finetune"):
            tuned = fine_tune(cfg, rid, plugins, adapter, target, ids)
        tuned.info.update(oneshot_sparsity=oneshot_achieved, **id_info)
        if tuned.pruned is not None:
            plan, reports = iterative_plan(adapter, tuned.pruned)
        reports, tuned.info["zeroed_by_training"] = zeroed_in_training(adapter, reports)
        with timer("verify"):
            achieved = verify(adapter, plan or dict.fromkeys(plan_keys(adapter), 0.0), target.nm, reports,
                              exact=tuned.pruned is not None or pruner.count == "exact",
                              overall=target.sparsity if tuned.pruned is not None else None)
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
        "scorer_info": scorer_info,
        "scores_reused": reused,
        "calibration": {**calib.identity, "pruner_samples": calib.num_samples} if calib.identity else {},
        "plan": plan,
        "achieved": achieved,
        "matrices": [r.as_dict() for r in reports],
        **comparison_groups(pruner, reports),
        **({"precision": dict(adapter.precision)} if adapter.precision else {}),
        **({"finetune": tuned.info} if tuned is not None else {}),
        "metrics": metrics,
        "eval_info": eval_info,
        "timings_s": timer.seconds,
        "torch_threads": torch.get_num_threads(),
        "peak_gpu_gb": timer.peak_gpu_gb,
    }
    if cfg.save_model:
        result["saved_model"] = save(adapter, Path(cfg.paths.models_dir) / rid, {**provenance, **result})
        if cfg.push_to_hub:
            result["pushed_to"] = push_to_hub(Path(result["saved_model"]), cfg.push_to_hub)
    return result


def fine_tune(cfg: DictConfig, rid: str, plugins: Plugins, adapter: ModelAdapter, target: Target,
              ids: dict[str, float] | None) -> Outcome:
    """The fine-tuning stage on its training split, or on the calibration samples when none is
    configured (the record says which); checkpoints under paths.checkpoints_dir/<run id>."""
    finetune, calib = plugins.finetune, plugins.calib
    assert finetune is not None
    if finetune.train is not None:
        samples, augment = finetune.train.samples(), finetune.train.augment == "train"
        trained_on = f"training split {finetune.train.describe()}"
    else:
        samples, augment = calib.samples(adapter, calib.num_samples), calib.augment == "train"
        trained_on = (f"calibration samples ({type(calib).__name__}, {len(samples)}): no training split is configured "
                      f"(finetune.train is null)")
        console.print(f"[yellow]fine-tuning on the {len(samples)} calibration samples[/]: no training split is "
                      f"configured (set finetune.train, e.g. /train@finetune.train: coco_karpathy)")
    return finetune.run(adapter, samples, augment, Path(cfg.paths.checkpoints_dir) / rid, target.sparsity, ids,
                        trained_on)


def zeroed_in_training(adapter: ModelAdapter, reports: list[MatrixReport]) -> tuple[list[MatrixReport], int]:
    """The reports with their allowance of other zeros widened by the kept weights training left at
    exactly 0.0 (an AdamW step can land one there: 1 of 1.9M in a BLIP ViT fc2 over 4 steps; a weight
    with no gradient stays at its 0 through iterative masks), and how many those are; verify still
    holds every matrix to at least its pruned count."""
    zeros = {m.name: int((m.weight == 0).sum()) for m in adapter.matrices()}
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


def cached_scores(cfg: DictConfig, config: dict[str, Any], adapter: ModelAdapter, batches: list, extended: list,
                  plugins: Plugins, redraw: Redraw | None
                  ) -> tuple[dict[str, float], dict[str, Any], Sketches | None, bool]:
    """(scores, scorer info, sketches, whether they were reused): from the score cache when another
    point of the sweep computed them (force=true recomputes), else computed and cached. A uniform
    scorer with nothing to sketch computes nothing worth keeping."""
    scorer, allocation, calib = plugins.scorer, plugins.allocation, plugins.calib
    worth = scorer.non_uniform or allocation.sketch_quantiles
    sketch = (allocation.sketch_score, allocation.sketch_quantiles) if allocation.sketch_quantiles else None
    cache = ScoreCache(cfg.paths.scores_dir)
    key = score_key(config, calib.identity.get("sha1", ""), sketch)
    if worth and not cfg.force and (hit := cache.load(key)) is not None:
        console.print(f"[green]scores reused[/] from {cache.root / key}.json (force=true recomputes them)")
        return *hit, True
    scores, sketches = scores_for(adapter, batches, extended, scorer, allocation, redraw)
    info = dict(scorer.info)
    if worth:
        cache.save(key, scores, info, sketches)
    return scores, info, sketches, False


def print_summary(record: dict[str, Any]) -> None:
    table = Table(title=f"run {record['id']}", show_header=False)
    table.add_row("model", record["model"])
    table.add_row("method", record["method"])
    target = record["target"]
    table.add_row("target sparsity", f"{target['sparsity']:.4f}" + (f" ({target['nm']})" if target["nm"] else ""))
    table.add_row("achieved sparsity", f"{record['achieved']['overall']:.4f} of "
                  f"{record['achieved']['prunable_params']:,} prunable weights")
    if calibration := record.get("calibration"):
        extra = calibration["samples"] - calibration["pruner_samples"]
        table.add_row("calibration", f"{calibration['pruner_samples']} samples" + (
            f" (+{extra} more for the scorer)" if extra > 0 else "") + f", SHA-1 {calibration['sha1'][:12]}")
    if record["plan"]:
        values = list(record["plan"].values())
        table.add_row("group sparsity range", f"{min(values):.4f} .. {max(values):.4f}")
    if tuned := record.get("finetune"):
        loss = (f", loss {tuned['loss_first']:.4f} -> {tuned['loss_last']:.4f}" if tuned["loss_first"] is not None
                else "")
        source = "calibration samples" if tuned["trained_on"].startswith("calibration") else "training split"
        table.add_row("fine-tuning", f"{tuned['mode']}, {tuned['steps']} steps on the {source}{loss}")
    for name, value in record["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in record["timings_s"].items()))
    memory = f"peak RSS {record['peak_rss_gb']:.2f} GB"
    if record["peak_gpu_gb"]:
        memory += f", peak GPU {max(record['peak_gpu_gb'].values()):.2f} GB"
    table.add_row("memory", memory)
    console.print(table)
