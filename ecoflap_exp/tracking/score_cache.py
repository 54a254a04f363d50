"""Block scores computed once per sweep: a sweep's sparsity points share their scores (and scorer
info, and global ranking's weight sketches), which do not depend on the sparsity.

The cache key hashes everything the scores depend on: the model config (with its towers) and, for
a local checkpoint, its files' sizes and modification times; the calibration config and a SHA-1 of
the batches it drew; the scorer config; the sketch's base score and resolution; the device; the
seed. Entries live under results/scores/<key>.json (+ <key>.sketches.safetensors), written
atomically; `force=true` recomputes and overwrites.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ecoflap_exp.allocation.base import Sketch, Sketches
from ecoflap_exp.oneshot import Scored
from ecoflap_exp.tracking.store import read_or_set_aside, write_atomically


def checkpoint_files(model: dict[str, Any]) -> list[list[Any]]:
    """(name, size, mtime) of a local checkpoint's files: a changed file is another model."""
    source = model.get("checkpoint") or model.get("pretrained")
    path = Path(str(source)).expanduser() if source else None
    if path is None or not path.exists():
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def score_key(config: dict[str, Any], calibration_sha1: str, sketch: tuple[str, int] | None) -> str:
    identity = {"model": config.get("model"), "files": checkpoint_files(config.get("model") or {}),
                "calib": config.get("calib"), "batches": calibration_sha1, "scorer": config.get("scorer"),
                "data": config.get("data"), "sketch": sketch, "device": config.get("device"),
                "seed": config.get("seed")}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ScoreCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def load(self, key: str) -> tuple[dict[str, float], dict[str, Any], Sketches | None] | None:
        """(scores, scorer info, sketches) of a cached entry, or None."""
        entry = read_or_set_aside(self.root / f"{key}.json")
        if entry is None or not {"scores", "scorer_info"} <= entry.keys():
            return None
        sketches = None
        if entry.get("sketched"):
            try:
                tensors = load_file(self.root / f"{key}.sketches.safetensors")
            except OSError:
                return None
            sketches = {name: Sketch(tensors[f"{name}/values"].numpy(), tensors[f"{name}/counts"].numpy())
                        for name in entry["sketched"]}
        return entry["scores"], entry["scorer_info"], sketches

    def save(self, key: str, scores: dict[str, float], info: dict[str, Any], sketches: Sketches | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if sketches is not None:
            tensors = {}
            for name, s in sketches.items():
                tensors[f"{name}/values"] = torch.from_numpy(np.ascontiguousarray(s.values))
                tensors[f"{name}/counts"] = torch.from_numpy(np.ascontiguousarray(s.counts))
            write_atomically(self.root / f"{key}.sketches.safetensors", lambda path: save_file(tensors, str(path)))
        entry = {"scores": scores, "scorer_info": info, "sketched": list(sketches) if sketches is not None else None}
        write_atomically(self.root / f"{key}.json", lambda path: path.write_text(json.dumps(entry, default=str)))



@dataclass
class CachedScores:
    """One key's entry of the cache, as the pruning core's ScoreMemo; `reuse=False` (force=true)
    computes the scores again and overwrites the entry."""

    cache: ScoreCache
    key: str
    reuse: bool = True

    def load(self) -> Scored | None:
        hit = self.cache.load(self.key) if self.reuse else None
        return None if hit is None else Scored(*hit)

    def save(self, scored: Scored) -> None:
        self.cache.save(self.key, scored.scores, scored.info, scored.sketches)

    @property
    def path(self) -> Path:
        return self.cache.root / f"{self.key}.json"
