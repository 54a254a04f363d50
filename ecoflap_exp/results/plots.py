"""Plots of an experiment: metric vs sparsity per method (with the papers' curves), the sparsity
of each group of each plan coloured by tower, and the measured intrinsic dimensions over relative
depth with the towers shaded (the ID paper's figure)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.paper import PAPER
from ecoflap_exp.results.records import experiment_rows, point_name

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINES = ("-", "--", "-.", ":")


def paper_points(experiment: str, metric: str) -> dict[str, dict[float, float]]:
    """method -> sparsity -> the paper's value of `metric` (for the curves of a plot)."""
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    for method, cells in PAPER.get(experiment, {}).items():
        for key, value in cells.items():
            point, _, name = key.partition("/")
            if name == metric and point.startswith("p"):
                curves[method][float(point[1:])] = value
    return curves


def plot_experiment(records: list[RunRecord], df: pd.DataFrame, experiment: str, plot_dir: Path) -> None:
    """metric vs sparsity per method (sweeps over two or more sparsities); sparsity per group of
    each plan coloured by tower; the IDs per matrix (or block) over relative depth."""
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
                k = len(colours)  # hollow markers of shrinking size: a curve on top of another stays visible
                (line,) = ax.plot(xs.iloc[order], group["value"].iloc[order], marker=MARKERS[k % len(MARKERS)],
                                  markersize=9 - 1.2 * (k % 5), markerfacecolor="none", linestyle=LINES[k % len(LINES)],
                                  label=method)
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
            if r.status == "ok" and r.config.get("experiment_name", "default") == experiment]
    plans = plans_by_point(mine)
    if plans:
        plot_plans(plt, plans, plot_dir / f"{experiment}_plans.png")
    curves = id_curves(mine)
    if curves:
        plot_id_curves(plt, curves, plot_dir / f"{experiment}_id.png")
    for record in tower_profile_records(mine):
        plot_tower_profiles(plt, record, plot_dir / f"{experiment}_{record.model}_towers.png")


def plans_by_point(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """point -> the records with a non-uniform plan there, one per method (the local pruner does
    not change the plan), in point order."""
    out: dict[str, dict[str, RunRecord]] = defaultdict(dict)
    for r in records:
        plan = r.plan
        if len(set(plan.values())) > 1:
            out[point_name(r)].setdefault(r.method.split("+")[0], r)
    order = sorted(out, key=lambda p: (0, float(p[1:])) if p.startswith("p") else (1, 0.0))
    return {p: list(out[p].values()) for p in order}


def tower_spans(names: list[str], tower_of: dict[str, str]) -> list[tuple[str, int, int]]:
    """(tower, first index, last index) of each run of consecutive groups of one tower."""
    spans: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        tower = tower_of.get(name, "?")
        if spans and spans[-1][0] == tower:
            spans[-1] = (tower, spans[-1][1], i)
        else:
            spans.append((tower, i, i))
    return spans


def plot_plans(plt: Any, plans: dict[str, list[RunRecord]], path: Path) -> None:
    """One panel per sparsity point: each group's planned sparsity in model order (x: tower and index
    within it), one line per method, the towers shaded, the target dashed."""
    methods = sorted({r.method.split("+")[0] for records in plans.values() for r in records})
    fig, axes = plt.subplots(len(plans), 1, figsize=(10, 2.8 * len(plans)), squeeze=False)
    for ax, (point, unordered) in zip(axes[:, 0], plans.items(), strict=True):
        records = sorted(unordered, key=lambda r: methods.index(r.method.split("+")[0]))
        names = list(records[0].plan)
        tower_of = records[0].tower_of()
        spans = tower_spans(names, tower_of)
        for k, (tower, first, last) in enumerate(spans):
            ax.axvspan(first - 0.5, last + 0.5, color=f"C{k}", alpha=0.12, linewidth=0)
            ax.text((first + last) / 2, 0.97, tower, ha="center", va="top", fontsize=8,
                    transform=ax.get_xaxis_transform())
        for r in records:
            k = methods.index(r.method.split("+")[0])  # one style per method in every panel
            offset = (k - (len(methods) - 1) / 2) * 0.06  # side by side where plans agree
            ax.plot([i + offset for i in range(len(names))], [r.plan.get(n, float("nan")) for n in names],
                    marker=MARKERS[k % len(MARKERS)], linestyle=LINES[k % len(LINES)], linewidth=1, color=f"C{k}",
                    label=methods[k])
        ax.axhline(records[0].target.sparsity, color="k", linestyle="--", linewidth=0.8, label="target")
        index_in_tower = [i - next(f for t, f, last in spans if f <= i <= last) for i in range(len(names))]
        ax.set_xticks(range(len(names)), [f"{tower_of.get(n, '?')[:3]}{j}" for n, j in zip(names, index_in_tower,
                                                                                          strict=True)],
                      fontsize=7, rotation=90 if len(names) > 30 else 0)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_ylabel("planned sparsity")
        ax.set_title(f"{records[0].model} at {point}: each group's planned sparsity", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def measured_ids(record: RunRecord) -> dict[str, float]:
    return record.scorer_info.get("intrinsic_dim") or {}


def id_curves(records: list[RunRecord]) -> list[RunRecord]:
    """One record per model and set of measured groups, leaving out those whose IDs another of the
    same model covers (a run that pruned every tower covers the ones that pruned one)."""
    keep: list[RunRecord] = []
    for r in sorted((r for r in records if measured_ids(r)), key=lambda r: -len(measured_ids(r))):
        if not any(k.model == r.model and set(measured_ids(r)) <= set(measured_ids(k)) for k in keep):
            keep.append(r)
    return keep


def plot_id_curves(plt: Any, records: list[RunRecord], path: Path) -> None:
    """The ID paper's figure: the ID of each measured group (matrix or block) over relative depth,
    the towers' regions shaded and named, one panel per curve."""
    fig, axes = plt.subplots(len(records), 1, figsize=(10, 3 * len(records)), squeeze=False)
    for ax, r in zip(axes[:, 0], records, strict=True):
        ids = measured_ids(r)
        tower_of = r.tower_of()
        names = list(ids)
        depth = [i / max(len(names) - 1, 1) for i in range(len(names))]
        ax.plot(depth, [ids[n] for n in names], marker=".", linewidth=1, color="k")
        spans = tower_spans(names, tower_of)
        step = 1 / max(len(names) - 1, 1)
        for k, (tower, first, last) in enumerate(spans):
            ax.axvspan(depth[first] - step / 2, depth[last] + step / 2, color=f"C{k}", alpha=0.15, linewidth=0)
            mean = sum(ids[n] for n in names[first : last + 1]) / (last - first + 1)
            ax.text((depth[first] + depth[last]) / 2, 0.98, f"{tower} (mean {mean:.1f})", ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform())
        ax.set_xlim(-step / 2, 1 + step / 2)
        ax.set_ylim(0, 1.15 * max(ids.values()))  # room for the tower names
        ax.set_xlabel("relative depth")
        ax.set_ylabel("intrinsic dimension")
        scorer = r.config.get("scorer", {})
        ax.set_title(f"{r.model}: ID per {scorer.get('granularity', 'group')} ({scorer.get('estimator', '?')}, "
                     f"{scorer.get('num_samples') or 'the calibration'} samples)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def block_profiles(record: RunRecord) -> dict[str, dict[str, list[float]]]:
    """Per tower, block by block in model order: the measured ID (the mean of its matrices' IDs where
    they were measured per matrix), the planned and the achieved sparsity (a per-matrix plan weighted
    by the matrices' sizes)."""
    ids, plan, achieved = measured_ids(record), record.plan, record.achieved
    blocks: dict[str, dict[str, list]] = {}
    for m in record.matrices:
        blocks.setdefault(m.block, {"tower": m.tower, "matrices": []})["matrices"].append(m)
    profiles: dict[str, dict[str, list[float]]] = {}
    for block, held in blocks.items():
        matrices = held["matrices"]
        sizes = [m.rows * m.cols for m in matrices]
        block_ids = [ids[m.name] for m in matrices if m.name in ids] or ([ids[block]] if block in ids else [])
        planned = plan[block] if block in plan else sum(
            plan.get(m.name, 0.0) * n for m, n in zip(matrices, sizes, strict=True)) / sum(sizes)
        tower = profiles.setdefault(held["tower"], {"id": [], "planned": [], "achieved": []})
        tower["id"].append(sum(block_ids) / len(block_ids) if block_ids else float("nan"))
        tower["planned"].append(planned)
        tower["achieved"].append(achieved.per_block.get(block, float("nan")) if achieved else float("nan"))
    return profiles


def tower_profile_records(records: list[RunRecord]) -> list[RunRecord]:
    """Per model, the run with measured IDs and a non-uniform plan nearest 50% sparsity (the ID paper's
    figure of BLIP: one model, one point)."""
    chosen: dict[str, RunRecord] = {}
    for r in records:
        if measured_ids(r) and r.matrices and r.target and len(set(r.plan.values())) > 1:
            best = chosen.get(r.model)
            if best is None or abs(r.target.sparsity - 0.5) < abs(best.target.sparsity - 0.5):
                chosen[r.model] = r
    return [chosen[model] for model in sorted(chosen)]


def plot_tower_profiles(plt: Any, record: RunRecord, path: Path) -> None:
    """The ID paper's per-tower figure: one column per tower (vision, projector, language), the ID of
    each block above and its planned and achieved sparsity below, the target dashed."""
    profiles = block_profiles(record)
    fig, axes = plt.subplots(2, len(profiles), figsize=(5 * len(profiles), 5.5), squeeze=False, sharey="row")
    for column, (tower, profile) in enumerate(profiles.items()):
        count = len(profile["id"])
        blocks = range(count)
        top, bottom = axes[0, column], axes[1, column]
        top.plot(blocks, profile["id"], marker=".", color=f"C{column}")
        top.set_title(f"{tower} ({count} block{'s' if count > 1 else ''})", fontsize=9)
        for ax in (top, bottom):
            ax.set_xlim(-0.5, count - 0.5)
            ax.set_xticks(range(0, count, max(1, count // 8)))
        bottom.plot(blocks, profile["planned"], marker="o", markerfacecolor="none", color=f"C{column}",
                    label="planned")
        bottom.plot(blocks, profile["achieved"], marker="x", linestyle=":", color="k", label="achieved")
        bottom.axhline(record.target.sparsity, color="grey", linestyle="--", linewidth=0.8, label="target")
        bottom.set_xlabel("block")
        if column == 0:
            top.set_ylabel("intrinsic dimension")
            bottom.set_ylabel("sparsity")
            bottom.legend(fontsize=7)
    fig.suptitle(f"{record.model}, {record.method} at {record.target.sparsity:g}: ID and sparsity per block",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
