"""The local results store, the source of truth: one JSON record per run under results/runs/.

A run's id is a hash of the config that determines its result (paths, `force` and the like are
left out), so an identical rerun finds its finished record and is skipped. Records are written to
a temporary file and renamed into place, so a crash never leaves a half-written record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: config keys that do not change a run's result (offload moves blocks, with the same weights as a
#: result); the one list both the store's run ids and W&B's run names use
NON_IDENTITY_KEYS = ("force", "paths", "save_model", "logger", "hydra", "offload")


#: what a dense run (sparsity 0, no N:M) does not depend on: how it would have been pruned
PRUNING_KEYS = ("scorer", "allocation", "pruner", "calib", "max_sparsity", "max_sparsity_delta")


def run_id(config: dict[str, Any]) -> str:
    identity = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    if identity.get("nm"):
        identity.pop("sparsity", None)  # N:M fixes the sparsity
    elif identity.get("sparsity") == 0:
        identity = {k: v for k, v in identity.items() if k not in PRUNING_KEYS}
        if isinstance(identity.get("model"), dict):  # which towers would have been pruned
            identity["model"] = {k: v for k, v in identity["model"].items() if k != "prune_towers"}
    canonical = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, rid: str) -> Path:
        return self.root / f"{rid}.json"

    def finished(self, rid: str) -> dict[str, Any] | None:
        """The record of a run that ended well, or None (absent, failed or unreadable)."""
        try:
            record = json.loads(self.path(rid).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if record.get("status") == "ok" else None

    def write(self, record: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(record["id"])
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
