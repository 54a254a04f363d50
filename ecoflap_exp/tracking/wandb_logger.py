"""Weights & Biases: log a finished run record, and read runs back as records (the local store
stays the source of truth; W&B is a shared view of it and a second source for `make tables`).

What one run logs (tests use WANDB_MODE=offline, so no account is needed):
- run config = the record's config (the composed Hydra config); group = experiment_name; name =
  the Hydra overrides that chose this point (e.g. `method=ecoflap_zeroth,sparsity=0.5`), else
  model-scorer-pruner-sparsity; run id = the record id, so a forced rerun updates the same run.
- scalars (charts): `metrics/<eval>/<metric>`, `time_s/<stage>`, `peak_gpu_gb/<stage>`,
  `peak_gpu_gb/pruning` (max over the pruning stages, the papers' memory column), `peak_rss_gb`,
  `sparsity/target`, `sparsity/achieved`;
- media: `block_sparsity` (table: group, tower, planned, achieved, score) and
  `block_sparsity_chart` (bar chart of the planned sparsity per group);
- summary only (what `record_from_run` reads back): `status`, `error`, `target`, `plan`,
  `scores`, `achieved` (overall, prunable_params, per_block), `towers` (block -> tower),
  `timings_s`, `peak_gpu_gb`, `started`, `finished`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ecoflap_exp.errors import UserError
from ecoflap_exp.extras import require
from ecoflap_exp.options import Names, Typed
from ecoflap_exp.record import RunRecord
from ecoflap_exp.tracking.store import NON_IDENTITY_KEYS

#: stages of the pruning job (load, calibrate, score, allocate, prune), i.e. not the evaluation
PRUNING_STAGES = ("load", "calibrate", "score", "allocate", "prune")
#: summary keys that hold record fields verbatim
RECORD_FIELDS = ("status", "error", "model", "method", "scorer", "target", "plan", "scores", "scorer_info", "eval_info",
                 "timings_s", "peak_gpu_gb", "peak_rss_gb", "started", "finished", "git_commit", "versions")


def pruning_peak_gpu_gb(record: RunRecord) -> float | None:
    """Peak GPU memory of the pruning job (max over its stages), None where nothing was measured
    (CPU runs) or nothing was pruned (dense: the papers print "-")."""
    peaks = record.peak_gpu_gb
    if not record.plan:
        return None
    values = [peaks[stage] for stage in PRUNING_STAGES if stage in peaks]
    return max(values) if values else None


def override_name(overrides: Iterable[str]) -> str:
    """`+experiment/method=wanda`, `sparsity=0.5` -> `method=wanda,sparsity=0.5` (the experiment's
    name and the keys that are not part of a run's identity, paths and the like, dropped: they do
    not distinguish sweep points)."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith("experiment/"):
            key = key.removeprefix("experiment/")
        elif key == "experiment" or key.split(".")[0].split("/")[0] in NON_IDENTITY_KEYS:
            continue
        parts.append(f"{key}={value}")
    return ",".join(parts)


def settings_name(record: RunRecord) -> str:
    """`llama_tiny-ecoflap-zeroth+wanda-p0.5` (a run that failed before its method was known: the
    model and the point only)."""
    cfg = record.config
    target = record.target.model_dump() if record.target else {"sparsity": cfg.get("sparsity"), "nm": cfg.get("nm")}
    pattern = target["nm"] or f"p{target['sparsity']:g}"
    return "-".join(part for part in (record.model, record.method, pattern) if part)


def hydra_overrides() -> list[str]:
    """The overrides of the running Hydra job (the sweep point), or [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(record: RunRecord, overrides: Iterable[str] = ()) -> str:
    return override_name(overrides) or settings_name(record)


def block_rows(record: RunRecord) -> list[list[Any]]:
    """One row per planned group (block or matrix): group, tower, planned, achieved, score."""
    if record.achieved is None:
        return []
    per_group = {**record.achieved.per_matrix, **record.achieved.per_block}
    plan = record.plan or dict.fromkeys(record.achieved.per_block, 0.0)
    towers = record.tower_of()
    return [[g, towers.get(g), s, per_group.get(g), record.scores.get(g)] for g, s in plan.items()]


def finetune_curves(record: RunRecord) -> list[tuple[int, dict[str, float]]]:
    """(step, values) of a fine-tuning run's curves, in step order: loss and learning rate, overall
    and per-tower sparsity at each masking step."""
    tuned = record.finetune or {}
    by_step: dict[int, dict[str, float]] = {}
    for step, loss, lr in tuned.get("loss_trajectory", []):
        by_step.setdefault(step, {}).update({"finetune/loss": loss, "finetune/lr": lr})
    for step, overall, towers in tuned.get("sparsity_trajectory", []):
        values = by_step.setdefault(step, {})
        values["finetune/sparsity"] = overall
        values.update({f"finetune/sparsity/{tower}": value for tower, value in towers.items()})
    return sorted(by_step.items())


class WandbLogger(Typed):
    option_group = "logger"

    def __init__(self, project: str = "ecoflap_exp", entity: str | None = None, mode: str | None = None,
                 dir: str | None = None, tags: Names | None = None):
        require("wandb", "wandb", "logger=wandb")
        self.settings = {"project": project, "entity": entity, "mode": mode, "dir": dir, "tags": list(tags or [])}

    def log(self, record: RunRecord) -> None:
        import wandb

        run = wandb.init(config=record.config, name=run_name(record, hydra_overrides()),
                         group=record.config.get("experiment_name"), id=record.id, resume="allow", **self.settings)
        scalars: dict[str, Any] = {f"metrics/{k}": v for k, v in record.metrics.items()}
        scalars.update({f"time_s/{k}": v for k, v in record.timings_s.items()})
        scalars.update({f"peak_gpu_gb/{k}": v for k, v in record.peak_gpu_gb.items()})
        if (pruning_peak := pruning_peak_gpu_gb(record)) is not None:
            scalars["peak_gpu_gb/pruning"] = pruning_peak
        scalars["peak_rss_gb"] = record.peak_rss_gb
        if record.target is not None:
            scalars["sparsity/target"] = record.target.sparsity
        if record.achieved is not None:
            scalars["sparsity/achieved"] = record.achieved.overall
        rows = block_rows(record)
        if rows:
            table = wandb.Table(columns=["group", "tower", "planned", "achieved", "score"], data=rows)
            scalars["block_sparsity"] = table
            scalars["block_sparsity_chart"] = wandb.plot.bar(table, "group", "planned",
                                                             title="planned sparsity per group")
        for step, values in finetune_curves(record):
            run.log(values, step=step)
        run.log(scalars)
        fields = record.model_dump(mode="json", include=set(RECORD_FIELDS))
        summary = {k: v for k, v in fields.items() if v is not None}
        if record.achieved is not None:
            summary["achieved"] = record.achieved.model_dump(include={"overall", "prunable_params", "per_tower",
                                                                      "per_block"})
        named = {*summary.get("achieved", {}).get("per_block", {}),
                 *record.scorer_info.get("intrinsic_dim", {})}  # the ID plot's matrices
        summary["towers"] = {group: tower for group, tower in record.tower_of().items() if group in named}
        run.summary.update(summary)
        log_artifacts(wandb, run, record)
        run.finish()


def log_artifacts(wandb: Any, run: Any, record: RunRecord) -> None:
    """The record itself (`record-<id>`, type run-record) and, with save_model=true, the saved
    folder (`model-<id>`, type model: weights, processor, pruning.json, model card) as Artifacts."""
    artifact = wandb.Artifact(f"record-{record.id}", type="run-record",
                              metadata={"model": record.model, "method": record.method})
    with artifact.new_file("record.json") as f:
        json.dump(record.as_json(), f, indent=1, default=str)
    run.log_artifact(artifact)
    if record.saved_model:
        model = wandb.Artifact(f"model-{record.id}", type="model",
                               metadata={"method": record.method,
                                         "target": record.target.model_dump() if record.target else None,
                                         "achieved": record.achieved.overall if record.achieved else None})
        model.add_dir(record.saved_model)
        run.log_artifact(model)


def plain(value: Any) -> Any:
    """The public API's summary objects (nested, dict-like) as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def record_from_run(run: Any) -> dict[str, Any]:
    """A W&B run (public API) as a run record of the local store's shape; KeyError when the run
    was not logged by WandbLogger (no `status` in its summary)."""
    summary = plain(run.summary)
    record: dict[str, Any] = {k: summary[k] for k in RECORD_FIELDS if k in summary}
    if "status" not in record:
        raise KeyError(f"status (W&B state {run.state!r}: not a finished run of ecoflap_exp)")
    record["id"] = getattr(run, "id", None) or run.name
    record["config"] = {k: v for k, v in plain(run.config).items() if not k.startswith("_")}
    record["metrics"] = {k.removeprefix("metrics/"): v for k, v in summary.items() if k.startswith("metrics/")}
    if "achieved" in summary:
        record["achieved"] = summary["achieved"]
    record["towers"] = summary.get("towers", {})
    record["source"] = f"wandb:{run.name}"
    return record


def records_from_project(path: str, api: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run of a W&B project (`entity/project`) as a record, and a message per run that is not
    one. `api`: a wandb.Api (made here when None)."""
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        runs = list(api.runs(path))
    except Exception as err:  # noqa: BLE001 - any failure of the remote read is one message
        raise UserError(f"could not read the W&B project {path!r} ({type(err).__name__}: {err}); check the "
                        f"entity/project name and that you are logged in (wandb login or WANDB_API_KEY)") from None
    records, problems = [], []
    for run in runs:
        try:
            records.append(record_from_run(run))
        except (KeyError, TypeError, AttributeError) as err:
            problems.append(f"W&B run {path}/{getattr(run, 'name', '?')}: no run record ({err}); skipped")
    return records, problems
