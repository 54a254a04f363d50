"""Entry point: `python run.py model=llama_tiny scorer=uniform pruner=wanda sparsity=0.5`.

A bad value, a missing file or an unusable model ends in one message naming the fix. In a
multirun, a failed point is recorded as failed in the results store and the sweep goes on.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ecoflap_exp.errors import UserError
from ecoflap_exp.runner import run

log = logging.getLogger("run")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
    except Exception:
        if not multirun:
            raise
        log.exception("run failed; recorded as failed, the sweep goes on")


if __name__ == "__main__":
    main()
