"""The short table a run prints at its end."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ecoflap_exp.record import RunRecord


def print_summary(record: RunRecord, console: Console | None = None) -> None:
    table = Table(title=f"run {record.id}", show_header=False)
    table.add_row("model", record.model)
    table.add_row("method", record.method)
    if (target := record.target) is not None:
        table.add_row("target sparsity", f"{target.sparsity:.4f}" + (f" ({target.nm})" if target.nm else ""))
    if (achieved := record.achieved) is not None:
        table.add_row("achieved sparsity", f"{achieved.overall:.4f} of {achieved.prunable_params:,} prunable weights")
    if (calibration := record.calibration) is not None:
        extra = calibration.samples - calibration.pruner_samples
        table.add_row("calibration", f"{calibration.pruner_samples} samples" + (
            f" (+{extra} more for the scorer)" if extra > 0 else "") + f", SHA-1 {calibration.sha1[:12]}")
    if record.plan:
        values = list(record.plan.values())
        table.add_row("group sparsity range", f"{min(values):.4f} .. {max(values):.4f}")
    if tuned := record.finetune:
        loss = (f", loss {tuned['loss_first']:.4f} -> {tuned['loss_last']:.4f}" if tuned["loss_first"] is not None
                else "")
        source = "calibration samples" if tuned["trained_on"].startswith("calibration") else "training split"
        table.add_row("fine-tuning", f"{tuned['mode']}, {tuned['steps']} steps on the {source}{loss}")
    for name, value in record.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in record.timings_s.items()))
    memory = f"peak RSS {record.peak_rss_gb or 0:.2f} GB"
    if record.peak_gpu_gb:
        memory += f", peak GPU {max(record.peak_gpu_gb.values()):.2f} GB"
    table.add_row("memory", memory)
    (console or Console()).print(table)
