"""The command line: `ecoflap model=llama_tiny scorer=uniform pruner=wanda sparsity=0.5` (also
`python -m ecoflap_exp ...` and, in a clone, `python run.py ...`), Hydra over the configs shipped in
the package (ecoflap_exp/configs); `hydra.searchpath=[file:///my/configs]` adds a folder of your own
configs (same group layout) beside them.

A bad value, a missing file or an unusable model ends in one message naming the fix (exit 2) and
leaves no record. In a multirun, a failed point is recorded as failed in the results store and
the sweep goes on; at its end the failed points are listed and the exit status is 1. Ctrl-C ends
in one line (exit 130; SIGTERM, as SLURM, `timeout` and docker send it, the same with exit 143):
finished points are kept and a rerun resumes.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ecoflap_exp.errors import ConfigError, Terminated, UserError
from ecoflap_exp.extras import require
from ecoflap_exp.runner import run
from ecoflap_exp.sweep import write_outcome

log = logging.getLogger("run")


#: hydra/launcher=<choice> -> (the plugin's module, the extra that installs it)
LAUNCHERS = {"slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib")}


def check_launcher(argv: list[str]) -> None:
    """A launcher whose plugin is not installed: our message naming the extra, before Hydra
    composes (its own would say only that a config group option is missing)."""
    for arg in argv:
        key, _, choice = arg.partition("=")
        if key in ("hydra/launcher", "override hydra/launcher") and choice in LAUNCHERS:
            module, extra = LAUNCHERS[choice]
            require(module, extra, f"hydra/launcher={choice}")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    """One run (or, with --multirun, one point of a sweep) of the composed config."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
    except UserError as err:  # a config error (no record), or one the run's record keeps
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        write_outcome("config_error" if isinstance(err, ConfigError) else "failed", str(err))
    except KeyboardInterrupt as err:
        print("interrupted; finished points are kept, rerun resumes", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)
    except Exception as err:
        if not multirun:
            raise
        log.exception("run failed; recorded as failed, the sweep goes on")
        write_outcome("failed", f"{type(err).__name__}: {err}")
    else:
        if multirun:
            write_outcome("ok" if record is not None else "skipped")


def terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main() -> None:
    """The `ecoflap` command."""
    signal.signal(signal.SIGTERM, terminate)
    try:
        check_launcher(sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
