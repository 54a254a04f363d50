"""Run records -> paper-style tables (markdown, CSV, LaTeX) and plots, one set per experiment.

Rows are methods (scorer + allocation + local pruner, as the papers name them), columns are
metrics, or sparsity x metric when an experiment sweeps sparsity. A point with no record shows as
"-", a failed run as "failed"; never as 0. Where the papers report the same cell (PAPER below, from
reference/ecoflap.md and reference/peers.md), a "paper" row and a "diff" row follow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: experiment -> method -> metric -> the paper's number (same metric names as our records)
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "llama_wikitext": {  # LLaMA-7B, WikiText-2 perplexity, seqlen 2048 (Wanda and OWL READMEs)
        "dense": {"p0/wikitext2/ppl": 5.68},
        "wanda": {"p0.5/wikitext2/ppl": 7.26, "p0.7/wikitext2/ppl": 85.77},
        "sparsegpt": {"p0.5/wikitext2/ppl": 7.22, "p0.7/wikitext2/ppl": 26.30},
        "owl+wanda": {"p0.7/wikitext2/ppl": 24.55},
        "owl+sparsegpt": {"p0.7/wikitext2/ppl": 19.49},
    },
}

SCORER_NAMES = {"Uniform": "", "ZerothOrder": "ecoflap-zeroth", "FirstOrder": "ecoflap-first",
                "IntrinsicDimension": "id", "OutlierRatio": "owl", "Product": "product"}


def short(target: str, suffix: str) -> str:
    return target.rsplit(".", 1)[-1].removesuffix(suffix)


def method_name(record: dict[str, Any]) -> str:
    cfg = record["config"]
    if record.get("target", {}).get("sparsity", cfg.get("sparsity")) == 0:
        return "dense"
    scorer = SCORER_NAMES.get(short(cfg["scorer"]["_target_"], "Scorer"), short(cfg["scorer"]["_target_"], "Scorer"))
    if scorer == "product":
        scorer = "x".join(SCORER_NAMES.get(short(f["_target_"], "Scorer"), "?") for f in cfg["scorer"]["factors"])
    allocation = short(cfg.get("allocation", {}).get("_target_", ""), "")
    if allocation == "GlobalRanking":
        scorer += "-global"
    pruner = short(cfg["pruner"]["_target_"], "Pruner").lower()
    return f"{scorer}+{pruner}" if scorer else pruner


def point_name(record: dict[str, Any]) -> str:
    cfg = record["config"]
    return f"nm{cfg['nm']}" if cfg.get("nm") else f"p{cfg['sparsity']:g}"


def load_records(results_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable record, and a message for each one that is not."""
    records, problems = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            record["config"]["scorer"]["_target_"]  # noqa: B018 - a record without these is malformed
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append(f"{path}: unreadable record ({type(err).__name__}: {err}); skipped")
            continue
        records.append(record)
    return records, problems


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        base = {"experiment": r["config"].get("experiment_name", "default"), "method": method_name(r),
                "point": point_name(r), "status": r.get("status", "?"), "id": r.get("id")}
        if r.get("status") == "ok":
            for metric, value in r.get("metrics", {}).items():
                rows.append({**base, "metric": metric, "value": value})
            rows.append({**base, "metric": "achieved_sparsity", "value": r["achieved"]["overall"]})
        else:
            rows.append({**base, "metric": None, "value": None, "error": r.get("error", "")})
    return pd.DataFrame(rows)


def experiment_table(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """method x (point/metric) table of strings: numbers, '-' for missing, 'failed'."""
    sub = df[df["experiment"] == experiment]
    ok = sub[sub["status"] == "ok"]
    metrics = sorted(m for m in ok["metric"].dropna().unique() if m != "achieved_sparsity")
    points = sorted(sub["point"].unique(), key=point_order)
    columns = [f"{p}/{m}" for p in points for m in metrics] if len(points) > 1 else metrics
    methods = sorted(sub["method"].unique(), key=lambda m: (m != "dense", m))
    table = pd.DataFrame("-", index=methods, columns=columns, dtype=object)
    for row in ok.itertuples():
        if row.metric in metrics:
            col = f"{row.point}/{row.metric}" if len(points) > 1 else row.metric
            table.loc[row.method, col] = f"{row.value:.2f}"
    for row in sub[sub["status"] != "ok"].itertuples():  # a failure never hides a finished run's number
        for col in columns:
            if (len(points) == 1 or col.startswith(f"{row.point}/")) and table.loc[row.method, col] == "-":
                table.loc[row.method, col] = "failed"
    return add_paper_rows(table, experiment, len(points) > 1, points[0] if points else "")


def point_order(point: str) -> tuple[int, float | str]:
    return (0, float(point[1:])) if point.startswith("p") else (1, point)


def add_paper_rows(table: pd.DataFrame, experiment: str, by_point: bool, only_point: str) -> pd.DataFrame:
    extra = {}
    for method, cells in PAPER.get(experiment, {}).items():
        paper = pd.Series("-", index=table.columns, dtype=object)
        diff = pd.Series("-", index=table.columns, dtype=object)
        for key, value in cells.items():
            col = key if by_point else key.split("/", 1)[1] if key.startswith(f"{only_point}/") else None
            if col not in table.columns:
                continue
            paper[col] = f"{value:.2f}"
            ours = table.loc[method, col] if method in table.index else "-"
            if ours not in ("-", "failed"):
                diff[col] = f"{float(ours) - value:+.2f}"
        if (paper != "-").any():
            extra[f"{method} (paper)"] = paper
            extra[f"{method} (ours - paper)"] = diff
    return pd.concat([table, pd.DataFrame(extra).T]) if extra else table


def by_metric(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A sparsity-sweep table split into one methods x sparsity table per metric (readable width)."""
    metrics: dict[str, list[str]] = {}
    for col in table.columns:
        point, _, metric = col.partition("/")
        metrics.setdefault(metric, []).append(col)
    return {m: table[cols].rename(columns=lambda c: c.split("/", 1)[0]) for m, cols in metrics.items()}


def markdown(experiment: str, table: pd.DataFrame) -> str:
    if not all("/" in c and c.split("/", 1)[0][:1] in "pn" for c in table.columns):
        return f"# {experiment}\n\n{table.to_markdown()}\n"
    parts = [f"# {experiment}\n"]
    for metric, sub in by_metric(table).items():
        parts.append(f"## {metric}\n\n{sub.to_markdown()}\n")
    return "\n".join(parts)


def write_tables(results_dir: Path, out_dir: Path) -> dict[str, pd.DataFrame]:
    records, problems = load_records(results_dir)
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
        table.to_csv(stem.with_suffix(".csv"))
        stem.with_suffix(".md").write_text(markdown(experiment, table))
        stem.with_suffix(".tex").write_text(table.to_latex())
        tables[experiment] = table
        plot_experiment(records, df, experiment, out_dir / "plots")
    return tables


def plot_experiment(records: list[dict[str, Any]], df: pd.DataFrame, experiment: str, plot_dir: Path) -> None:
    """metric vs sparsity per method; sparsity per group of each plan (and ID scores) by tower."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    ok = df[(df["experiment"] == experiment) & (df["status"] == "ok") & df["point"].str.startswith("p")]
    metrics = [m for m in ok["metric"].dropna().unique() if m != "achieved_sparsity"]
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            for method, group in ok[ok["metric"] == metric].groupby("method"):
                if method == "dense":  # one point: a reference line for every curve
                    ax.axhline(group["value"].iloc[0], color="k", linestyle="--", linewidth=1, label="dense")
                    continue
                xs = group["point"].str[1:].astype(float)
                order = xs.argsort()
                ax.plot(xs.iloc[order], group["value"].iloc[order], marker="o", label=method)
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
    ids = [(r, r["scores"], "intrinsic dimension") for r in mine
           if r["config"]["scorer"]["_target_"].endswith("IntrinsicDimensionScorer") and r.get("scores")]
    for suffix, panels in (("plans", plans), ("id", ids)):
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.5 * len(panels)), squeeze=False)
        for ax, (r, values, label) in zip(axes[:, 0], panels, strict=True):
            tower_of = {m[key]: m["tower"] for m in r.get("matrices", []) for key in ("name", "block")}
            towers = sorted(set(tower_of.values()))
            groups = list(values)
            colors = [f"C{towers.index(tower_of[g]) if g in tower_of else 9}" for g in groups]
            ax.bar(range(len(groups)), [values[g] for g in groups], color=colors)
            ax.set_ylabel(label)
            ax.set_title(f"{method_name(r)} {point_name(r)} per group, colour = tower ({', '.join(towers)})",
                         fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_dir / f"{experiment}_{suffix}.png", dpi=100)
        plt.close(fig)
