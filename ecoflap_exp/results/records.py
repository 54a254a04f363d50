"""Reading run records: the local store (the source of truth) and, optionally, W&B projects; how a
record is named in tables (its method, its sparsity point)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ecoflap_exp.record import RunRecord
from ecoflap_exp.tracking.store import NON_IDENTITY_KEYS

POINT = re.compile(r"^(p\d[\d.e-]*|nm\d+:\d+)/")


def config_value(cfg: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def method_name(record: RunRecord, row_keys: tuple[str, ...] = ()) -> str:
    """The record's method (as the runner named it: wanda, ecoflap-zeroth+wanda, dense, ...); with
    row_keys, plus those settings, e.g. `ecoflap-zeroth+wanda (eps=0.001, num_samples=32)`."""
    name = record.method
    if row_keys:
        settings = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_setting(config_value(record.config, key))}"
                             for key in row_keys)
        name += f" ({settings})"
    return name


#: config keys a table's cell does not pool over: its runs may differ in these only (seeds are
#: pooled), and its column already says the sparsity
POOLED_KEYS = ("seed",)
POINT_KEYS = ("sparsity", "nm")


def setting_leaves(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config's leaves (dotted key -> value as text), seeds, the point and what does not change
    a result (store.NON_IDENTITY_KEYS) left out."""
    leaves: dict[str, str] = {}
    for key, value in config.items():
        if key in POOLED_KEYS or (not prefix and key in (*POINT_KEYS, *NON_IDENTITY_KEYS)):
            continue
        if isinstance(value, dict):
            leaves.update(setting_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = format_setting(value)
    return leaves


def setting_labels(records: list[RunRecord], names: list[str]) -> list[str]:
    """Per record, what tells its setting from the others of the same experiment, model and method
    name (`model.prune_towers=[text]`), or "" where they share it: only runs that differ in their
    seed pool into one cell."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (record, name) in enumerate(zip(records, names, strict=True)):
        groups[(record.config.get("experiment_name"), record.model, name)].append(i)
    labels = [""] * len(records)
    for members in groups.values():
        leaves = [setting_leaves(records[i].config) for i in members]
        keys = sorted({k for leaf in leaves for k in leaf})
        differing = [k for k in keys if len({leaf.get(k, "-") for leaf in leaves}) > 1]
        for i, leaf in zip(members, leaves, strict=True):
            labels[i] = ", ".join(f"{k}={leaf.get(k, '-')}" for k in differing)
    return labels


def format_setting(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


#: weights whose prunable matrices hold at least this fraction of zeros are pruned ones (released
#: dense weights hold next to none): a run that pruned nothing but loaded such weights (a pruned
#: checkpoint reloaded) is named by what its weights hold, not as dense, and a companion model
#: receives them (evals.base.OnCompanion)
LOADED_SPARSE = 0.01


def point_name(record: RunRecord) -> str:
    """`nm2:4`, `p0.5`; a point that pruned nothing but loaded sparse weights: their sparsity (`p0.5`)."""
    cfg = record.config
    if cfg.get("nm"):
        return f"nm{cfg['nm']}"
    held = record.achieved.overall if record.achieved is not None else 0.0
    if cfg["sparsity"] == 0 and held >= LOADED_SPARSE:
        return f"p{round(held, 2):g}"
    return f"p{cfg['sparsity']:g}"


def table_record(data: dict[str, Any]) -> RunRecord:
    """The record (schema 1 or 2), or ValueError without what every table needs (its sparsity
    point; a finished run's achieved sparsity)."""
    record = RunRecord.load(data)
    if not isinstance(record.config.get("sparsity"), int | float):
        raise ValueError("its config has no sparsity")
    return record


def load_records(results_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """Every readable record of the local store, and a message for each one that is not."""
    records, problems = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name.startswith("."):  # a temporary file of a write in progress (or of a killed one)
            continue
        try:
            record = table_record(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            problems.append(f"{path}: unreadable record ({type(err).__name__}: {' '.join(str(err).split())}); "
                            f"skipped")
            continue
        records.append(record)
    return records, problems


def collect_records(results_dir: Path, wandb_projects: Iterable[str] = (),
                    api: Any = None) -> tuple[list[RunRecord], list[str]]:
    """The local store's records plus those of each W&B project (`entity/project`) that the store
    lacks (same run id = same run; the store is the source of truth)."""
    records, problems = load_records(results_dir)
    seen = {r.id for r in records}
    for project in wandb_projects:
        from ecoflap_exp.tracking.wandb_logger import records_from_project

        remote, remote_problems = records_from_project(project, api)
        problems += remote_problems
        for data in remote:
            try:
                record = table_record(data)
            except (ValueError, TypeError) as err:
                problems.append(f"{data.get('source')}: incomplete record ({type(err).__name__}: "
                                f"{' '.join(str(err).split())}); skipped")
                continue
            if record.id not in seen:
                seen.add(record.id)
                records.append(record)
    return records, problems


def experiment_rows(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The experiment's rows; where it ran more than one model, each method is labelled with its
    model (`llama_tiny: wanda`), so the models' runs never share a cell."""
    sub = df[df["experiment"] == experiment]
    if sub["model"].nunique() > 1:
        sub = sub.assign(method=sub["model"] + ": " + sub["method"])
    return sub
