"""What a multirun ended with: each point writes its outcome into its own job folder and, once the
sweep ends, a Hydra callback counts them, names every failed point and exits non-zero if any
failed (a sweep whose every point failed must not look like a success).

Outcomes: `ok` (the point has a finished record, from this sweep or an earlier one), `skipped`
(another live process holds it), `config_error` (a bad value or missing file: no run, no record)
and `failed` (the run's work failed: its record keeps the error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

OUTCOME_FILE = "outcome.json"
FAILED = ("failed", "config_error")


def write_outcome(status: str, error: str | None = None) -> None:
    """Record this job's outcome in its own output folder (a multirun job)."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    (folder / OUTCOME_FILE).write_text(json.dumps({"status": status, "error": error, "overrides": overrides}))


def read_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob(f"*/{OUTCOME_FILE}"))]


class SweepReport(Callback):
    """Counts the sweep's outcomes at its end; exit status 1 when any point failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcomes = read_outcomes(self.sweep_dir)
        counts = {status: sum(o["status"] == status for o in outcomes)
                  for status in ("ok", "skipped", "config_error", "failed")}
        failed = [o for o in outcomes if o["status"] in FAILED]
        print(f"sweep {self.sweep_dir}: {len(outcomes)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
              file=sys.stderr)
        for o in failed:
            print(f"  {o['status']}: {' '.join(o['overrides'])}: {o['error']}", file=sys.stderr)
        if failed:
            sys.exit(1)
