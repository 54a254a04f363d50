"""A run's plugins built from its config: everything but the model, built (and so checked) before
any weights load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.finetune.trainer import FineTuning
from ecoflap_exp.oneshot import Method


def build(node: DictConfig) -> Any:
    """hydra.utils.instantiate, letting a plugin's UserError through as itself (Hydra wraps every
    error of a constructor in its own exception type, which would bury the message)."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


@dataclass
class Plugins:
    """The calibration source, the method (scorer, allocation, pruner), the evaluations, the
    external logger (logger=wandb, else None) and the fine-tuning stage (finetune=masked|iterative,
    else None)."""

    calib: CalibrationSource
    method: Method
    evals: dict[str, Evaluation]
    logger: Any = None
    finetune: FineTuning | None = None

    @classmethod
    def build(cls, cfg: DictConfig) -> Plugins:
        method = Method(build(cfg.scorer), build(cfg.allocation), build(cfg.pruner))
        evals = {name: build(ev) for name, ev in cfg.evals.items()}
        logger = build(cfg.logger) if cfg.get("logger") else None
        finetune = build(cfg.finetune) if cfg.get("finetune") else None
        return cls(build(cfg.calib), method, evals, logger, finetune)

    def method_name(self, sparsity: float) -> str:
        """The method as the papers name it (`wanda`, `ecoflap-zeroth+wanda`, `owl+sparsegpt`), with the
        fine-tuning's part (`ecoflap-zeroth+wanda+masked-ft`, `iterative-platon-id`, after a one-shot
        start `wanda>iterative-taylor`); `dense` for an unpruned point."""
        if self.finetune is not None:
            return self.finetune.method_name(self.method.name, sparsity)
        return "dense" if sparsity == 0 else self.method.name
