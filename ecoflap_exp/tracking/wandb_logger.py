"""Weights & Biases logging of a finished run record (the local store stays the source of truth).

Logs the config, metrics, timings, peak memory, achieved sparsity, and the plan as a table plus a
bar chart of per-group sparsity; runs are grouped by experiment and named from their settings.
Tests and CI use WANDB_MODE=offline or disabled, so no account is needed.
"""

from __future__ import annotations

from typing import Any


def run_name(record: dict[str, Any]) -> str:
    cfg = record["config"]
    model = cfg["model"].get("arch") or cfg["model"].get("model_name") or "model"
    scorer = cfg["scorer"]["_target_"].rsplit(".", 1)[-1].removesuffix("Scorer")
    pruner = cfg["pruner"]["_target_"].rsplit(".", 1)[-1].removesuffix("Pruner")
    target = record["target"]
    pattern = target["nm"] or f"p{target['sparsity']:g}"
    return f"{model}-{scorer}-{pruner}-{pattern}".lower()


class WandbLogger:
    def __init__(self, project: str = "ecoflap_exp", entity: str | None = None, mode: str | None = None,
                 dir: str | None = None, tags: list[str] | None = None):
        self.settings = {"project": project, "entity": entity, "mode": mode, "dir": dir, "tags": list(tags or [])}

    def log(self, record: dict[str, Any]) -> None:
        import wandb

        run = wandb.init(config=record["config"], name=run_name(record), group=record["config"].get("experiment_name"),
                         id=record["id"], resume="allow", **self.settings)
        summary: dict[str, Any] = {f"metrics/{k}": v for k, v in record.get("metrics", {}).items()}
        summary.update({f"time_s/{k}": v for k, v in record.get("timings_s", {}).items()})
        summary.update({f"peak_gpu_gb/{k}": v for k, v in record.get("peak_gpu_gb", {}).items()})
        summary["peak_rss_gb"] = record.get("peak_rss_gb")
        summary["status"] = record["status"]
        if "achieved" in record:
            summary["sparsity/achieved"] = record["achieved"]["overall"]
        plan = record.get("plan") or {}
        if plan:
            scores = record.get("scores") or {}
            table = wandb.Table(columns=["group", "sparsity", "score"],
                                data=[[g, s, scores.get(g)] for g, s in plan.items()])
            summary["plan"] = table
            summary["plan_chart"] = wandb.plot.bar(table, "group", "sparsity", title="sparsity per group")
        run.log(summary)
        run.finish()
