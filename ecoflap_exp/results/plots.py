"""Plots of an experiment: metric vs sparsity per method (with the papers' curves), and the
sparsity of each group of each plan (and ID scores), coloured by tower."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from ecoflap_exp.results.paper import PAPER
from ecoflap_exp.results.records import experiment_rows, method_name, point_name
from ecoflap_exp.tracking.wandb_logger import towers_of


def paper_points(experiment: str, metric: str) -> dict[str, dict[float, float]]:
    """method -> sparsity -> the paper's value of `metric` (for the curves of a plot)."""
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    for method, cells in PAPER.get(experiment, {}).items():
        for key, value in cells.items():
            point, _, name = key.partition("/")
            if name == metric and point.startswith("p"):
                curves[method][float(point[1:])] = value
    return curves


def plot_experiment(records: list[dict[str, Any]], df: pd.DataFrame, experiment: str, plot_dir: Path) -> None:
    """metric vs sparsity per method (sweeps over two or more sparsities); sparsity per group of
    each plan (and ID scores) coloured by tower."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    rows = experiment_rows(df, experiment)
    ok = rows[(rows["status"] == "ok") & rows["point"].str.startswith("p")]
    metrics = [m for m in ok["metric"].dropna().unique() if m != "achieved_sparsity"]
    if metrics and ok.loc[ok["point"] != "p0", "point"].nunique() > 1:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            colours = {}
            for method, group in ok[ok["metric"] == metric].groupby("method"):
                if method == "dense":  # one point: a reference line for every curve
                    ax.axhline(group["value"].iloc[0], color="k", linestyle="--", linewidth=1, label="dense")
                    continue
                xs = group["point"].str[1:].astype(float)
                order = xs.argsort()
                (line,) = ax.plot(xs.iloc[order], group["value"].iloc[order], marker="o", label=method)
                colours[method] = line.get_color()
            for method, curve_points in paper_points(experiment, metric).items():
                if method in colours:  # the paper's curve of a method we ran, in its colour
                    xs = sorted(curve_points)
                    ax.plot(xs, [curve_points[x] for x in xs], linestyle=":", marker="x", color=colours[method],
                            label=f"{method} (paper)")
            ax.set_xlabel("sparsity")
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
        fig.suptitle(experiment)
        fig.tight_layout()
        fig.savefig(plot_dir / f"{experiment}.png", dpi=100)
        plt.close(fig)
    mine = [r for r in records
            if r.get("status") == "ok" and r["config"].get("experiment_name", "default") == experiment]
    plans, seen_plans = [], []
    for r in mine:  # one panel per distinct plan (the local pruner does not change it)
        plan = r.get("plan") or {}
        if len(set(plan.values())) > 1 and plan not in seen_plans:
            seen_plans.append(plan)
            plans.append((r, plan, "sparsity"))
    ids = [(r, r["scores"], "intrinsic dimension") for r in mine if r.get("scorer") == "id" and r.get("scores")]
    for suffix, panels in (("plans", plans), ("id", ids)):
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.5 * len(panels)), squeeze=False)
        for ax, (r, group_values, label) in zip(axes[:, 0], panels, strict=True):
            tower_of = towers_of(r)
            towers = sorted(set(tower_of.values()))
            groups = list(group_values)
            colors = [f"C{towers.index(tower_of[g]) if g in tower_of else 9}" for g in groups]
            ax.bar(range(len(groups)), [group_values[g] for g in groups], color=colors)
            ax.set_ylabel(label)
            ax.set_title(f"{r['model']} {method_name(r)} {point_name(r)} per group, colour = tower "
                         f"({', '.join(towers)})", fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_dir / f"{experiment}_{suffix}.png", dpi=100)
        plt.close(fig)
