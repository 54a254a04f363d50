"""Run records -> paper-style tables (markdown, CSV, LaTeX), one set per experiment (and its plots).

Records come from the local results store and, optionally, from W&B projects (public API; a run
also in the store is taken from the store). Rows are methods (scorer + allocation + local pruner,
as the papers name them), columns are metrics. An experiment with one sparsity (plus its dense
reference, which is folded into the same columns) is a methods x metrics table like the papers'
Tables 1 and 2; one that sweeps sparsity has sparsity x metric columns and its markdown shows one
methods x sparsity table per metric (like a figure's curves).

Cells: a point with no record shows as "-", a failed run as "failed"; never as 0. Records of one
method and point that differ in their seed are that cell's runs: it shows their mean ± sample
standard deviation and their count, `96.11 ± 0.20 (n=2)`. Derived columns
(results.paper's DERIVED, e.g. Table 1's macro average) are computed where every input exists.
Where the papers report the same cell (results.paper's PAPER), a "(paper)" row and an
"(ours - paper)" row follow.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import pandas as pd

from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.paper import DERIVED, LAYOUTS, PAPER, Layout
from ecoflap_exp.results.plots import plot_experiment
from ecoflap_exp.results.records import (
    POINT,
    collect_records,
    experiment_rows,
    method_name,
    point_name,
    setting_labels,
)
from ecoflap_exp.tracking.wandb_logger import pruning_peak_gpu_gb

log = logging.getLogger(__name__)

def frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (record, metric); a failed record is one row with its error and its evals."""
    rows = []
    names = [method_name(r, LAYOUTS.get(r.config.get("experiment_name", "default"), Layout()).row_keys)
             for r in records]
    for r, name, label in zip(records, names, setting_labels(records, names), strict=True):
        experiment = r.config.get("experiment_name", "default")
        layout = LAYOUTS.get(experiment, Layout())
        base = {"experiment": experiment, "model": r.model, "method": f"{name} [{label}]" if label else name,
                "point": point_name(r), "status": r.status, "id": r.id}
        if r.status == "ok":
            for metric, value in r.metrics.items():
                rows.append({**base, "metric": metric, "value": value})
            rows.append({**base, "metric": "achieved_sparsity", "value": r.achieved.overall})
            if layout.per_tower:
                for metric, value in tower_metrics(r).items():
                    rows.append({**base, "metric": metric, "value": value})
            if (memory := pruning_peak_gpu_gb(r)) is not None:
                rows.append({**base, "metric": "prune_peak_gpu_gb", "value": memory})
        else:
            evals = r.config.get("evals")
            rows.append({**base, "metric": None, "value": None, "error": r.error or "",
                         "evals": tuple(evals) if isinstance(evals, dict) and evals else None})
    return pd.DataFrame(rows)


def tower_metrics(record: RunRecord) -> dict[str, float]:
    """`sparsity/<tower>`: the achieved sparsity of each pruned tower; `mean_id/<tower>`: the mean
    intrinsic dimension the scorer measured in it."""
    out = {f"sparsity/{t}": v for t, v in record.achieved.per_tower.items()}
    out.update({f"mean_id/{t}": v for t, v in record.scorer_info.get("tower_mean_id", {}).items()})
    return out


def cell_text(values: list[float]) -> str:
    """One run: its value; several (seeds of one setting): mean ± sample std (n=...)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ± {stdev(values):.2f} (n={len(values)})"


def cell_value(text: str) -> float:
    """The number a cell shows (its mean for several seeds)."""
    return float(text.split()[0])


def derive(values: dict[str, float]) -> dict[str, float]:
    """The DERIVED metrics whose inputs are all in `values`."""
    return {name: mean(mean(values[m] for m in task) for task in tasks) for name, tasks in DERIVED.items()
            if all(m in values for task in tasks for m in task)}


def point_order(point: str) -> tuple[int, float | str]:
    return (0, float(point[1:])) if point.startswith("p") else (1, point)


def experiment_table(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """method x metric (one sparsity) or method x point/metric table of strings: numbers, '-' for
    missing, 'failed'; then the paper rows."""
    layout = LAYOUTS.get(experiment, Layout())
    sub = experiment_rows(df, experiment)
    points = sorted(sub["point"].unique(), key=point_order)
    pruned_points = [p for p in points if p != "p0"]
    folded = len(pruned_points) <= 1

    def column(point: str, metric: str) -> str:
        return metric if folded else f"{point}/{metric}"

    runs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in sub[sub["status"] == "ok"].itertuples():
        if row.metric != "achieved_sparsity":
            runs[(row.method, row.point)][row.metric].append(row.value)
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for key, cell in runs.items():  # derived metrics per run (the runs of a cell are its seeds)
        count = max(len(v) for v in cell.values())
        per_run = [{m: v[i] for m, v in cell.items() if len(v) == count} for i in range(count)]
        derived = [derive(run) for run in per_run]
        values[key] = {**cell, **{m: [d[m] for d in derived] for m in derived[0]}}
    paper_metrics = [m for m, _ in layout.columns]
    metrics = paper_metrics + sorted({m for cell in values.values() for m in cell} - set(paper_metrics))
    columns = list(dict.fromkeys(column(p, m) for p in points for m in metrics))
    methods = sorted(sub["method"].unique(), key=layout.row_order)
    table = pd.DataFrame("-", index=methods, columns=columns, dtype=object)
    for (method, point), cell in values.items():
        for metric, runs_of_cell in cell.items():
            table.loc[method, column(point, metric)] = cell_text(runs_of_cell)
    for row in sub[sub["status"] != "ok"].itertuples():  # a failure never hides a finished run's number
        evals = getattr(row, "evals", None)
        for metric in metrics:
            col = column(row.point, metric)
            belongs = not isinstance(evals, tuple) or metric.split("/", 1)[0] in evals
            if belongs and col in table.columns and table.loc[row.method, col] == "-":
                table.loc[row.method, col] = "failed"
    return add_paper_rows(table, experiment, folded, pruned_points[0] if folded and pruned_points else None)


def add_paper_rows(table: pd.DataFrame, experiment: str, folded: bool, only_point: str | None) -> pd.DataFrame:
    """Each method's row followed by the paper's row and our difference, in the layout's order."""
    layout = LAYOUTS.get(experiment, Layout())
    rows = {method: [(method, table.loc[method])] for method in table.index}
    for method, cells in PAPER.get(experiment, {}).items():
        paper = pd.Series("-", index=table.columns, dtype=object)
        diff = pd.Series("-", index=table.columns, dtype=object)
        for key, value in cells.items():
            point, metric = key.split("/", 1)
            col = (metric if point in ("p0", only_point) else None) if folded else key
            if col not in table.columns:
                continue
            paper[col] = f"{value:.2f}"
            ours = table.loc[method, col] if method in table.index else "-"
            if ours not in ("-", "failed"):
                diff[col] = f"{cell_value(ours) - value:+.2f}"
        if (paper != "-").any():
            rows.setdefault(method, []).append((f"{method} ({layout.paper_label})", paper))
            if (diff != "-").any():
                rows[method].append((f"{method} (ours - paper)", diff))
    ordered = [row for method in sorted(rows, key=layout.row_order) for row in rows[method]]
    return pd.DataFrame([values for _, values in ordered], index=[name for name, _ in ordered],
                        columns=table.columns, dtype=object)


def is_by_point(table: pd.DataFrame) -> bool:
    return len(table.columns) > 0 and all(POINT.match(c) for c in table.columns)


def by_metric(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A sparsity-sweep table split into one methods x sparsity table per metric (readable width)."""
    metrics: dict[str, list[str]] = {}
    for col in table.columns:
        point, _, metric = col.partition("/")
        metrics.setdefault(metric, []).append(col)
    return {m: table[cols].rename(columns=lambda c: c.split("/", 1)[0]) for m, cols in metrics.items()}


def labelled(experiment: str, table: pd.DataFrame) -> pd.DataFrame:
    """The paper's column labels for its columns (markdown and LaTeX; the CSV keeps metric names)."""
    labels = dict(LAYOUTS.get(experiment, Layout()).columns)
    return table.rename(columns=lambda c: labels.get(c, c))


def numeric(table: pd.DataFrame) -> pd.DataFrame:
    """The table as numbers for the CSV: a cell's value (its mean for several seeds), empty where
    the markdown shows '-' or 'failed'."""
    def number(text: str) -> float | None:
        try:
            return cell_value(text)
        except ValueError:
            return None

    return table.map(number).astype(float)


def to_markdown(table: pd.DataFrame) -> str:
    """Cells as written (tabulate would re-parse "57.90" as 57.9), numbers aligned right."""
    return table.to_markdown(disable_numparse=True, colalign=("left", *["right"] * len(table.columns)))


def markdown(experiment: str, table: pd.DataFrame) -> str:
    note = LAYOUTS.get(experiment, Layout()).note
    parts = [f"# {experiment}\n"] + ([f"{note}\n"] if note else [])
    if not is_by_point(table):
        parts.append(f"{to_markdown(labelled(experiment, table))}\n")
    else:
        parts += [f"## {metric}\n\n{to_markdown(sub)}\n" for metric, sub in by_metric(table).items()]
    return "\n".join(parts)


def write_tables(results_dir: Path, out_dir: Path, wandb_projects: Iterable[str] = (),
                 api: Any = None) -> dict[str, pd.DataFrame]:
    """results/tables/<experiment>.{md,csv,tex} and results/plots/<experiment>*.png for every
    experiment in the records; returns the tables."""
    records, problems = collect_records(results_dir, wandb_projects, api)
    for problem in problems:
        log.warning(problem)
    tables = {}
    if not records:
        return tables
    df = frame(records)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    for experiment in sorted(df["experiment"].unique()):
        table = experiment_table(df, experiment)
        stem = out_dir / "tables" / experiment
        numeric(table).to_csv(stem.with_suffix(".csv"))
        stem.with_suffix(".md").write_text(markdown(experiment, table))
        stem.with_suffix(".tex").write_text(labelled(experiment, table).to_latex(escape=True))
        tables[experiment] = table
        plot_experiment(records, df, experiment, out_dir / "plots")
    return tables
