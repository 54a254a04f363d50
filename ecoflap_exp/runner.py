"""One run, start to end, read top to bottom: check, load, calibrate, prune, fine-tune, evaluate,
record (docs/ARCHITECTURE.md has the layout). Each step is a call into the module named for it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from ecoflap_exp.environment import (
    StageTimer,
    git_commit,
    main_process,
    peak_rss_gb,
    resolve_device,
    set_threads,
    versions,
)
from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.evals.base import evaluate_suite
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.oneshot import Calibration, Target, check_fits, check_weights, prune_with
from ecoflap_exp.plugins import Plugins, build
from ecoflap_exp.preflight import preflight, validate
from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.records import LOADED_SPARSE
from ecoflap_exp.results.summary import print_summary
from ecoflap_exp.scoring.base import first_samples
from ecoflap_exp.tracking.model_card import push_to_hub, write_extras
from ecoflap_exp.tracking.score_cache import CachedScores, ScoreCache, score_key
from ecoflap_exp.tracking.store import ResultsStore, keep_elsewhere, run_id
from ecoflap_exp.tuning import fine_tune, intrinsic_dims

log = logging.getLogger(__name__)
console = Console()


def run(cfg: DictConfig) -> RunRecord | None:
    """Run one configured experiment point and return its record (already in the store), or None
    when another live process holds the point. Every check that needs no weights comes first; a
    UserError before the run's work (a bad value, a missing file or checkpoint, a model that does
    not fit its calib or suite) is a config error and leaves no record."""
    with config_errors():
        target = validate(cfg)
        config = resolved(cfg)
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
            adapter = load(cfg, timer, target)
        record = RunRecord(id=rid, status="running", model=cfg.model.name, config=config,
                           method=plugins.method_name(target.sparsity), scorer=plugins.method.scorer.name,
                           started=now(), versions=versions(), git_commit=git_commit())
        threads_before = torch.get_num_threads()
        set_threads(cfg.threads, adapter)
        try:
            execute(cfg, target, plugins, adapter, timer, record)
            if target.sparsity == 0 and record.achieved.overall >= LOADED_SPARSE:
                record.method = "as-loaded"  # a pruned checkpoint evaluated as it is: not dense
            record.status = "ok"
        except KeyboardInterrupt as err:
            record.status, record.error = "interrupted", type(err).__name__
            raise
        except BaseException as err:
            record.status, record.error = "failed", f"{type(err).__name__}: {err}"
            raise
        finally:
            torch.set_num_threads(threads_before)  # the caller's setting again (the API, a test session)
            record.finished, record.peak_rss_gb = now(), peak_rss_gb()
            unwritten = store.write_or_say_why(record) if main_process() else None
    if not main_process():
        return record
    if plugins.logger is not None:
        log_externally(plugins.logger, record)
    print_summary(record, console)
    if unwritten is not None:
        kept = keep_elsewhere(record)
        where = (f"the whole record is in {kept}: copy it to {store.path(rid)} once there is room, and the run "
                 f"counts as finished" if kept else "its metrics are printed above")
        if kept is None:
            print(json.dumps({"id": rid, "metrics": record.metrics, "achieved": record.achieved.overall}),
                  file=sys.stderr)
        raise UserError(f"the run finished but its record could not be written to {store.path(rid)} ({unwritten}); "
                        f"{where}; free the disk (or fix the folder)")
    return record


def execute(cfg: DictConfig, target: Target, plugins: Plugins, adapter: ModelAdapter, timer: StageTimer,
            record: RunRecord) -> None:
    """The run's work, filling its record: calibrate, prune, fine-tune, evaluate, save."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    calib, method, finetune = plugins.calib, plugins.method, plugins.finetune
    oneshot = target
    if finetune is not None and (sparsity := finetune.oneshot_sparsity(target.sparsity)) != target.sparsity:
        oneshot = Target.of(sparsity, None, None, cfg.max_sparsity_delta)  # iterative pruning's one-shot start
    use_id = finetune is not None and finetune.use_id
    calibration = Calibration([])
    if oneshot.sparsity > 0 or use_id:
        with timer("calibrate"):
            needed = max(method.scorer.samples_needed or 0, (finetune.id.samples_needed or 0) if use_id else 0)
            extended = calib.batches(adapter, needed or None)  # the ID paper's 2000, say
            calibration = Calibration(first_samples(extended, calib.num_samples), extended)
            del extended
    if cfg.redraw_calibration and oneshot.sparsity > 0:
        calibration.redraw = calib.redrawing(adapter)
    sketch = ((method.allocation.sketch_score, method.allocation.sketch_quantiles)
              if method.allocation.sketch_quantiles else None)
    memo = CachedScores(ScoreCache(cfg.paths.scores_dir), score_key(record.config, calib.identity.get("sha1", ""),
                                                                     sketch), reuse=not cfg.force)
    pruned = prune_with(adapter, calibration, method, oneshot, cache_gb=cfg.cache_gb, device=device,
                        offload=cfg.offload, pads_in_stats=cfg.pads_in_stats, memo=memo, stage=timer)
    if pruned.reused:
        console.print(f"[green]scores reused[/] from {memo.path} (force=true recomputes them)")
    plan, reports, achieved = pruned.plan, pruned.reports, pruned.achieved
    id_info: dict[str, Any] = {}
    if use_id:
        with timer("intrinsic_dim"):
            id_info = intrinsic_dims(finetune, adapter, calibration)
    del calibration  # free the batches before training
    if finetune is not None:
        tuned = fine_tune(finetune, calib, adapter, pruned, target, Path(cfg.paths.checkpoints_dir) / record.id,
                          id_info, method.exact, timer)
        record.finetune = tuned.info
        plan, reports, achieved = tuned.plan, tuned.reports, tuned.achieved
    if cfg.offload:
        adapter.to(device)
    with timer("eval"):
        metrics, eval_info = evaluate_suite(plugins.evals, adapter)
    groups = {r.tower: r.group for r in reports if r.group is not None}
    record.target = target.as_record()
    record.scores, record.scorer_info, record.scores_reused = pruned.scored.scores, pruned.scored.info, pruned.reused
    record.calibration = {**calib.identity, "pruner_samples": calib.num_samples} if calib.identity else None
    record.plan, record.achieved, record.matrices = plan, achieved, reports
    record.comparison_groups = {method.pruner.name: groups} if groups else {}
    record.precision = dict(adapter.precision)
    record.metrics, record.eval_info = metrics, eval_info
    record.timings_s, record.peak_gpu_gb = timer.seconds, timer.peak_gpu_gb
    record.torch_threads = torch.get_num_threads()
    if cfg.save_model:
        record.saved_model = save(adapter, Path(cfg.paths.models_dir) / record.id, record)
        if finetune is not None:
            finetune.save_beside(Path(record.saved_model))  # finetune=lora: the adapters, in peft's format
        if cfg.push_to_hub:
            record.pushed_to = push_to_hub(Path(record.saved_model), cfg.push_to_hub)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, every interpolation resolved."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        where, why = getattr(err, "full_key", "?"), str(err).splitlines()[0]
        raise UserError(f"the config does not resolve at {where}: {why} (do the chosen model, calib and suite "
                        f"fit together?)") from None


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A UserError raised inside is a ConfigError: it came before the run's work."""
    try:
        yield
    except ConfigError:
        raise
    except UserError as err:
        raise ConfigError(str(err)) from None


def load(cfg: DictConfig, timer: StageTimer, target: Target) -> ModelAdapter:
    """The model, on its device, with finite weights, towers that fit model.prune_towers and
    matrices the N:M pattern fits (what only the loaded model can tell, still before a record)."""
    with timer("load"):
        adapter: ModelAdapter = build(cfg.model)
        if not cfg.offload:
            adapter.to(resolve_device(cfg.device))
    check_weights(adapter)
    check_fits(adapter, target.nm)  # adapter.matrices() checks model.prune_towers
    return adapter


def save(adapter: ModelAdapter, folder: Path, record: RunRecord) -> str:
    """The pruned model in its library's own format, pruning.json and a model card."""
    folder.mkdir(parents=True, exist_ok=True)
    adapter.save(folder)
    hint = adapter.load_hint.format(path=str(folder), model_class=type(adapter.model).__name__)
    write_extras(folder, record, hint)
    return str(folder)


def log_externally(logger: Any, record: RunRecord) -> None:
    """Hand the record to the configured logger; its failure never costs the run (the record is
    already in the store)."""
    try:
        logger.log(record)
    except Exception as err:  # noqa: BLE001 - any logger failure is reported, never fatal
        log.warning("logging run %s externally failed (%s: %s); its record is in the store",
                    record.id, type(err).__name__, err)


def now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")
