"""The local results store, the source of truth: one JSON record per run under results/runs/.

A run's id is a hash of the config that determines its result (paths, `force` and the like are
left out), so an identical rerun finds its finished record and is skipped. Records are written to
a temporary file and renamed into place, so a crash never leaves a half-written record (and a
failed write leaves no temporary file). A process claims a run id before running it (an
exclusively created `<id>.claim` naming host, pid and the process's start time), so two sweeps into
one store run each point once; a claim whose process is gone (same host, no process with that pid
and start time) is stale and taken over. A record that cannot be read is moved aside (`<id>.json.
unreadable`) with one line and the run recomputed; temporary files (`.tmp-*`) are never records and
those older than an hour are removed when a run checks the store. Files get the user's umask.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from ecoflap_exp.errors import UserError
from ecoflap_exp.record import RunRecord

log = logging.getLogger(__name__)
Parsed = TypeVar("Parsed")
#: temporary files older than this are left over by a killed process
STALE_TEMPORARY_S = 3600

#: config keys that do not change a run's result (offload moves blocks, with the same weights as a
#: result; the thread count gave identical tables on `make run`); the one list both the store's run
#: ids and W&B's run names use
NON_IDENTITY_KEYS = ("force", "paths", "save_model", "push_to_hub", "logger", "hydra", "offload", "threads")


#: what a dense run (sparsity 0, no N:M) does not depend on: how it would have been pruned
PRUNING_KEYS = ("scorer", "allocation", "pruner", "calib", "max_sparsity", "max_sparsity_delta", "pads_in_stats",
                "redraw_calibration")


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

    def finished(self, rid: str) -> RunRecord | None:
        """The record of a run that ended well, or None (absent, failed, or unreadable: then moved
        aside so that the rerun's record takes its place)."""
        record = read_or_set_aside(self.path(rid), RunRecord.load)
        return record if record is not None and record.status == "ok" else None

    def check_writable(self) -> None:
        """UserError unless a record can be written here (checked before any work); removes the
        temporary files a killed process left."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.root)
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
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
                "since": dt.datetime.now().isoformat(timespec="seconds")}
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-claim-")
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            try:
                os.link(tmp, path)  # atomic: the claim appears whole or not at all
            except FileExistsError:
                holder = read_claim(path)
                if holder is not None and not stale(holder):
                    yield holder
                    return
                path.unlink(missing_ok=True)  # its process is gone: take it over
                continue
            finally:
                Path(tmp).unlink(missing_ok=True)
            try:
                yield None
            finally:
                path.unlink(missing_ok=True)
            return
        raise UserError(f"could not claim run {rid} in {self.root}: another process keeps re-creating {path.name}")

    def write(self, record: RunRecord) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(record.id)
        write_atomically(target, lambda path: path.write_text(record_json(record)))
        return target

    def write_or_say_why(self, record: RunRecord) -> str | None:
        """Write the record; on failure log where it could not go and return why (None: written). A
        failure to write never hides the run's own error."""
        try:
            self.write(record)
        except OSError as err:
            reason = f"{type(err).__name__}: {err.strerror or err}"
            log.error("could not write the record of run %s to %s (%s)", record.id, self.path(record.id), reason)
            return reason
        return None


def record_json(record: RunRecord) -> str:
    return json.dumps(record.as_json(), indent=1, default=str)


def keep_elsewhere(record: RunRecord) -> Path | None:
    """The record written where the store could not take it: the system's temporary folder, else
    the home folder (None if neither can)."""
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        path = folder / f"ecoflap-record-{record.id}.json"
        with contextlib.suppress(OSError):
            write_atomically(path, lambda tmp: tmp.write_text(record_json(record)))
            return path
    return None


def write_atomically(target: Path, write: Callable[[Path], Any]) -> None:
    """`write(path)` into a temporary file beside `target`, synced and renamed into place: never a
    half-written file, and no temporary left when the write fails."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would outlive the rename
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


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stale(claim: dict[str, Any]) -> bool:
    """A claim of this host whose process no longer runs: no process with its pid, or one started at
    another time (the pid was reused). A claim of another host never is."""
    if claim.get("host") != socket.gethostname():
        return False
    try:
        started = process_start(int(claim["pid"]))
    except (KeyError, ValueError, TypeError):
        return False
    return started is None or (claim.get("started") is not None and abs(started - claim["started"]) > 1)


def read_or_set_aside(path: Path, parse: Callable[[dict[str, Any]], Parsed] = dict) -> Parsed | None:
    """A JSON object's content, parsed (a ValueError from `parse` means unreadable); None if absent;
    one that cannot be read is renamed to `<name>.unreadable` with one logged line (None)."""
    try:
        content = json.loads(path.read_text())
        if not isinstance(content, dict):
            raise ValueError(f"a JSON {type(content).__name__}, not an object")
        return parse(content)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        aside = path.with_name(path.name + ".unreadable")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.warning("%s cannot be read (%s: %s); moved to %s, and it is computed again", path, type(err).__name__,
                    " ".join(str(err).split()), aside.name)
        return None


def remove_stale_temporaries(folder: Path) -> None:
    """The `.tmp-*` files of processes killed while writing (older than STALE_TEMPORARY_S)."""
    now = dt.datetime.now().timestamp()
    for tmp in folder.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
