"""Run records -> paper-style tables (markdown, CSV, LaTeX) and plots, one set per experiment.

Records come from the local results store and, optionally, from W&B projects (public API; a run
also in the store is taken from the store). Rows are methods (scorer + allocation + local pruner,
as the papers name them), columns are metrics. An experiment with one sparsity (plus its dense
reference, which is folded into the same columns) is a methods x metrics table like the papers'
Tables 1 and 2; one that sweeps sparsity has sparsity x metric columns and its markdown shows one
methods x sparsity table per metric (like a figure's curves).

Cells: a point with no record shows as "-", a failed run as "failed"; never as 0. Derived columns
(DERIVED) are computed where every input exists: ECoFLaP Table 1's "Macro Avg." is the mean over
the five tasks with NoCaps = mean(CIDEr, SPICE) and Flickr30k = mean(TR@1, IR@1) (full model:
(63.1 + 41.1 + 44.1 + 68.75 + 93.65) / 5 = 62.1); Table 2's average is the plain mean of the 11
datasets. `prune_peak_gpu_gb` is the peak GPU memory of the pruning stages (Table 1's memory
column; the paper's "GB" is max_memory_allocated / 1024^2 / 1000, i.e. MiB / 1000, ours GiB).
Where the papers report the same cell (PAPER, from reference/ecoflap.md section 6 and
reference/peers.md), a "(paper)" row and an "(ours - paper)" row follow.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import pandas as pd

from ecoflap_exp.tracking.wandb_logger import pruning_peak_gpu_gb, towers_of

log = logging.getLogger(__name__)

#: ECoFLaP Table 1 (BLIP-2 FlanT5-XL, zero-shot, 50%): the five tasks, as the blip2_paper suite names them
TABLE1_TASKS: tuple[tuple[str, ...], ...] = (("vqav2/accuracy",), ("okvqa/accuracy",), ("gqa/accuracy",),
                                             ("nocaps/cider", "nocaps/spice"), ("flickr30k/tr@1", "flickr30k/ir@1"))
#: ECoFLaP Table 2 (CLIP ViT-B/16 at 40%): CoOp's 11 datasets in the paper's column order
COOP_DATASETS = ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "oxford_flowers",
                 "oxford_pets", "stanford_cars", "sun397", "ucf101")

#: derived metric -> its tasks; value = mean over tasks of the mean of each task's metrics
DERIVED: dict[str, tuple[tuple[str, ...], ...]] = {
    "macro_avg": TABLE1_TASKS,
    "avg/top1": tuple((f"{d}/top1",) for d in COOP_DATASETS),
}


def paper_cells(point: str, metrics: Iterable[str], values: Iterable[float | None]) -> dict[str, float]:
    return {f"{point}/{m}": v for m, v in zip(metrics, values, strict=True) if v is not None}


def curve(metric: str, by_sparsity: dict[float, float]) -> dict[str, float]:
    return {f"p{sparsity:g}/{metric}": v for sparsity, v in by_sparsity.items()}


TABLE1_METRICS = ("prune_peak_gpu_gb", *(m for task in TABLE1_TASKS for m in task), "macro_avg")
TABLE2_METRICS = (*(f"{d}/top1" for d in COOP_DATASETS), "avg/top1")

#: experiment -> method -> "p<sparsity>/<metric>" -> the paper's number (same metric names as our records)
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "llama_wikitext": {  # LLaMA-7B, WikiText-2 perplexity, seqlen 2048 (Wanda and OWL READMEs)
        "dense": {"p0/wikitext2/ppl": 5.68},
        "wanda": {"p0.5/wikitext2/ppl": 7.26, "p0.7/wikitext2/ppl": 85.77},
        "sparsegpt": {"p0.5/wikitext2/ppl": 7.22, "p0.7/wikitext2/ppl": 26.30},
        "owl+wanda": {"p0.7/wikitext2/ppl": 24.55},
        "owl+sparsegpt": {"p0.7/wikitext2/ppl": 19.49},
    },
    "table1_blip2": {  # ECoFLaP Table 1: memory GB, VQAv2, OK-VQA, GQA, NoCaps CIDEr/SPICE, Flickr30k TR@1/IR@1, macro
        "dense": paper_cells("p0", TABLE1_METRICS, (None, 63.1, 41.1, 44.1, 121.7, 15.8, 97.6, 89.7, 62.1)),
        "sparsegpt": paper_cells("p0.5", TABLE1_METRICS, (9.04, 57.4, 36.1, 40.8, 108.1, 14.1, 96.4, 86.3, 57.4)),
        "wanda": paper_cells("p0.5", TABLE1_METRICS, (8.87, 57.9, 35.3, 42.2, 106.9, 14.1, 95.1, 84.6, 57.2)),
        "ecoflap-first+wanda": paper_cells("p0.5", TABLE1_METRICS,
                                           (22.4, 59.4, 36.3, 42.3, 109.9, 14.2, 95.9, 86.2, 58.2)),
        "ecoflap-zeroth+wanda": paper_cells("p0.5", TABLE1_METRICS,
                                            (8.93, 58.4, 35.6, 42.9, 110.2, 14.3, 95.5, 85.8, 58.0)),
    },
    "fig4_blip2": {  # ECoFLaP Figure 4, BLIP-2 VQAv2 accuracy vs sparsity, read off the plot (approximate)
        "dense": {"p0/vqav2/accuracy": 63.1},
        "wanda": curve("vqav2/accuracy", {0.2: 63.0, 0.4: 61.4, 0.5: 57.9, 0.6: 45.9}),
        "ecoflap-first+wanda": curve("vqav2/accuracy", {0.2: 63.1, 0.4: 61.4, 0.5: 59.4, 0.6: 50.3}),
        "ecoflap-zeroth+wanda": curve("vqav2/accuracy", {0.2: 63.1, 0.4: 61.5, 0.5: 58.4, 0.6: 50.3}),
    },
    "table2_clip": {  # ECoFLaP Table 2: CLIP ViT-B/16 zero-shot top-1 at 40%, 11 CoOp datasets and their mean
        "dense": paper_cells("p0", TABLE2_METRICS,
                             (92.9, 44.5, 47.8, 24.8, 86.1, 66.7, 71.3, 89.1, 65.3, 62.6, 66.8, 65.3)),
        "wanda": paper_cells("p0.4", TABLE2_METRICS,
                             (85.1, 31.2, 33.5, 9.0, 66.0, 45.6, 37.2, 71.3, 35.0, 50.8, 54.7, 47.2)),
        "sparsegpt": paper_cells("p0.4", TABLE2_METRICS,
                                 (90.5, 41.5, 47.4, 19.2, 79.4, 50.8, 59.0, 86.4, 53.4, 55.3, 63.2, 58.7)),
        "ecoflap-zeroth+wanda": paper_cells("p0.4", TABLE2_METRICS,
                                            (87.5, 37.9, 43.8, 16.0, 72.8, 53.5, 57.0, 80.3, 46.9, 58.2, 62.4, 56.0)),
        "ecoflap-zeroth+sparsegpt": paper_cells(
            "p0.4", TABLE2_METRICS, (90.0, 42.4, 45.4, 22.5, 81.2, 56.5, 64.1, 88.3, 56.8, 60.2, 63.4, 61.0)),
    },
}


@dataclass(frozen=True)
class Layout:
    """How one experiment's table follows its paper artefact."""

    columns: tuple[tuple[str, str], ...] = ()  # (metric, the paper's column label), in the paper's order
    rows: tuple[str, ...] = ()                 # methods in the paper's order (others follow, sorted)
    row_keys: tuple[str, ...] = ()             # config keys that split one method into rows (ablations)
    paper_label: str = "paper"
    note: str = ""

    def row_order(self, method: str) -> tuple[int, str]:
        """The paper's order, then dense, then the rest by name."""
        return (self.rows.index(method) if method in self.rows else len(self.rows) + (method != "dense"), method)


TABLE1_LABELS = ("Mem. (GB)", "VQAv2", "OK-VQA", "GQA", "NoCaps CIDEr", "NoCaps SPICE", "Flickr30k TR@1",
                 "Flickr30k IR@1", "Macro Avg.")
TABLE2_LABELS = ("Caltech101", "DTD", "EuroSAT", "FGVCAircraft", "Food101", "ImageNet", "OxfordFlowers",
                 "OxfordPets", "StanfordCars", "SUN397", "UCF101", "Avg.")
LAYOUTS: dict[str, Layout] = {
    "table1_blip2": Layout(
        columns=tuple(zip(TABLE1_METRICS, TABLE1_LABELS, strict=True)),
        rows=("dense", "sparsegpt", "wanda", "ecoflap-first+wanda", "ecoflap-zeroth+wanda"),
        note="ECoFLaP Table 1: BLIP-2 FlanT5-XL, zero-shot, 50% sparsity. Mem. = peak GPU memory of the pruning "
             "job (paper: MiB/1000, ours: GiB). Macro Avg. = mean of VQAv2, OK-VQA, GQA, mean(CIDEr, SPICE), "
             "mean(TR@1, IR@1)."),
    "fig4_blip2": Layout(
        columns=(("vqav2/accuracy", "VQAv2"),), rows=("dense", "wanda", "ecoflap-first+wanda", "ecoflap-zeroth+wanda"),
        paper_label="paper, read off the plot",
        note="ECoFLaP Figure 4 (BLIP-2 VQAv2 vs sparsity); the paper rows are read off the plot (approximate)."),
    "table2_clip": Layout(
        columns=tuple(zip(TABLE2_METRICS, TABLE2_LABELS, strict=True)),
        rows=("dense", "wanda", "sparsegpt", "ecoflap-zeroth+wanda", "ecoflap-zeroth+sparsegpt"),
        note="ECoFLaP Table 2: CLIP ViT-B/16 zero-shot top-1 at 40% sparsity, each dataset pruned with its own "
             "train split. Avg. = mean of the 11 datasets."),
    "id_asymmetry": Layout(row_keys=("model.prune_towers",),
                           note="Vision vs language prunability (ID paper): the same pruner on one tower "
                                "group at a time; sparsity is of the pruned towers' weights."),
    "id_asymmetry_clip": Layout(row_keys=("model.prune_towers",),
                                note="Vision vs language prunability (ID paper) on CLIP."),
    "zeroth_ablation": Layout(row_keys=("scorer.eps", "scorer.num_samples"),
                              note="Zeroth-order hyperparameters: perturbation size eps x number of samples."),
}

POINT = re.compile(r"^(p\d[\d.e-]*|nm\d+:\d+)/")


def config_value(cfg: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def method_name(record: dict[str, Any], row_keys: tuple[str, ...] = ()) -> str:
    """The record's method (as the runner named it: wanda, ecoflap-zeroth+wanda, dense, ...); with
    row_keys, plus those settings, e.g. `ecoflap-zeroth+wanda (eps=0.001, num_samples=32)`."""
    name = record["method"]
    if row_keys:
        settings = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_setting(config_value(record['config'], key))}"
                             for key in row_keys)
        name += f" ({settings})"
    return name


def format_setting(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def point_name(record: dict[str, Any]) -> str:
    cfg = record["config"]
    return f"nm{cfg['nm']}" if cfg.get("nm") else f"p{cfg['sparsity']:g}"


def check_record(record: dict[str, Any]) -> None:
    """KeyError/TypeError for a record without what every table needs (a run that failed before its
    plugins were built has no method: it has no cell to show)."""
    record["model"], record["method"], record["config"]["sparsity"]  # noqa: B018
    if record["status"] == "ok":
        record["achieved"]["overall"]  # noqa: B018


def load_records(results_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable record of the local store, and a message for each one that is not."""
    records, problems = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            check_record(record)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append(f"{path}: unreadable record ({type(err).__name__}: {err}); skipped")
            continue
        records.append(record)
    return records, problems


def collect_records(results_dir: Path, wandb_projects: Iterable[str] = (),
                    api: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The local store's records plus those of each W&B project (`entity/project`) that the store
    lacks (same run id = same run; the store is the source of truth)."""
    records, problems = load_records(results_dir)
    seen = {r.get("id") for r in records}
    for project in wandb_projects:
        from ecoflap_exp.tracking.wandb_logger import records_from_project

        remote, remote_problems = records_from_project(project, api)
        problems += remote_problems
        for record in remote:
            try:
                check_record(record)
            except (KeyError, TypeError) as err:
                problems.append(f"{record.get('source')}: incomplete record ({type(err).__name__}: {err}); skipped")
                continue
            if record["id"] not in seen:
                seen.add(record["id"])
                records.append(record)
    return records, problems


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (record, metric); a failed record is one row with its error and its evals."""
    rows = []
    for r in records:
        experiment = r["config"].get("experiment_name", "default")
        base = {"experiment": experiment, "model": r["model"],
                "method": method_name(r, LAYOUTS.get(experiment, Layout()).row_keys),
                "point": point_name(r), "status": r.get("status", "?"), "id": r.get("id")}
        if r.get("status") == "ok":
            for metric, value in r.get("metrics", {}).items():
                rows.append({**base, "metric": metric, "value": value})
            rows.append({**base, "metric": "achieved_sparsity", "value": r["achieved"]["overall"]})
            if (memory := pruning_peak_gpu_gb(r)) is not None:
                rows.append({**base, "metric": "prune_peak_gpu_gb", "value": memory})
        else:
            evals = r["config"].get("evals")
            rows.append({**base, "metric": None, "value": None, "error": r.get("error", ""),
                         "evals": tuple(evals) if isinstance(evals, dict) and evals else None})
    return pd.DataFrame(rows)


def derive(values: dict[str, float]) -> dict[str, float]:
    """The DERIVED metrics whose inputs are all in `values`."""
    return {name: mean(mean(values[m] for m in task) for task in tasks) for name, tasks in DERIVED.items()
            if all(m in values for task in tasks for m in task)}


def experiment_rows(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The experiment's rows; where it ran more than one model, each method is labelled with its
    model (`llama_tiny: wanda`), so the models' runs never share a cell."""
    sub = df[df["experiment"] == experiment]
    if sub["model"].nunique() > 1:
        sub = sub.assign(method=sub["model"] + ": " + sub["method"])
    return sub


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

    values: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in sub[sub["status"] == "ok"].itertuples():
        if row.metric != "achieved_sparsity":
            values[(row.method, row.point)][row.metric] = row.value
    for cell in values.values():
        cell.update(derive(cell))
    paper_metrics = [m for m, _ in layout.columns]
    metrics = paper_metrics + sorted({m for cell in values.values() for m in cell} - set(paper_metrics))
    columns = list(dict.fromkeys(column(p, m) for p in points for m in metrics))
    methods = sorted(sub["method"].unique(), key=layout.row_order)
    table = pd.DataFrame("-", index=methods, columns=columns, dtype=object)
    for (method, point), cell in values.items():
        for metric, value in cell.items():
            table.loc[method, column(point, metric)] = f"{value:.2f}"
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
                diff[col] = f"{float(ours) - value:+.2f}"
        if (paper != "-").any():
            rows.setdefault(method, []).append((f"{method} ({layout.paper_label})", paper))
            if (diff != "-").any():
                rows[method].append((f"{method} (ours - paper)", diff))
    ordered = [row for method in sorted(rows, key=layout.row_order) for row in rows[method]]
    return pd.DataFrame([values for _, values in ordered], index=[name for name, _ in ordered],
                        columns=table.columns, dtype=object)


def paper_points(experiment: str, metric: str) -> dict[str, dict[float, float]]:
    """method -> sparsity -> the paper's value of `metric` (for the curves of a plot)."""
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    for method, cells in PAPER.get(experiment, {}).items():
        for key, value in cells.items():
            point, _, name = key.partition("/")
            if name == metric and point.startswith("p"):
                curves[method][float(point[1:])] = value
    return curves


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
        table.to_csv(stem.with_suffix(".csv"))
        stem.with_suffix(".md").write_text(markdown(experiment, table))
        stem.with_suffix(".tex").write_text(labelled(experiment, table).to_latex(escape=True))
        tables[experiment] = table
        plot_experiment(records, df, experiment, out_dir / "plots")
    return tables


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
