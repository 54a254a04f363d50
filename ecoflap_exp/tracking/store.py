"""The local results store, the source of truth: one JSON record per run under results/runs/.

A run's id is a hash of the config that determines its result (paths, `force` and the like are
left out), so an identical rerun finds its finished record and is skipped. Records are written to
a temporary file and renamed into place, so a crash never leaves a half-written record (and a
failed write leaves no temporary file). A process claims a run id before running it (an
exclusively created `<id>.claim`), so two sweeps into one store run each point once; a claim whose
process is gone (same host) is stale and taken over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ecoflap_exp.errors import UserError

#: config keys that do not change a run's result (offload moves blocks, with the same weights as a
#: result; the thread count gave identical tables on `make run`); the one list both the store's run
#: ids and W&B's run names use
NON_IDENTITY_KEYS = ("force", "paths", "save_model", "push_to_hub", "logger", "hydra", "offload", "threads")


#: what a dense run (sparsity 0, no N:M) does not depend on: how it would have been pruned
PRUNING_KEYS = ("scorer", "allocation", "pruner", "calib", "max_sparsity", "max_sparsity_delta", "pads_in_stats")


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

    def check_writable(self) -> None:
        """UserError unless a record can be written here (checked before any work)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".tmp-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise UserError(f"the results folder {self.root} is not writable ({err.strerror or err}); free it, or "
                            f"set paths.results_dir (or ECOFLAP_ROOT) to a writable folder") from None

    @contextlib.contextmanager
    def claim(self, rid: str) -> Iterator[dict[str, Any] | None]:
        """Hold run `rid` for this process: yields None when claimed (released on exit), else the
        claim of the live process that holds it."""
        path = self.root / f"{rid}.claim"
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now().isoformat(timespec="seconds")}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-claim-")
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        try:
            for _ in range(2):
                try:
                    os.link(tmp, path)  # atomic: the claim appears whole or not at all
                except FileExistsError:
                    holder = read_claim(path)
                    if holder is not None and not stale(holder):
                        yield holder
                        return
                    path.unlink(missing_ok=True)  # its process is gone: take it over
                    continue
                try:
                    yield None
                finally:
                    path.unlink(missing_ok=True)
                return
        finally:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"could not claim run {rid} in {self.root}: another process keeps re-creating {path.name}")

    def write(self, record: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(record["id"])
        write_atomically(target, lambda path: path.write_text(json.dumps(record, indent=1, default=str)))
        return target


def write_atomically(target: Path, write: Callable[[Path], Any]) -> None:
    """`write(path)` into a temporary file beside `target`, synced and renamed into place: never a
    half-written file, and no temporary left when the write fails."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_claim(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # released meanwhile


def stale(claim: dict[str, Any]) -> bool:
    """A claim of this host whose process no longer runs (a claim of another host never is)."""
    if claim.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False
