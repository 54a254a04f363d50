"""A run's checks before anything loads: the config's values (each against its type, then the
rules that tie them together), then what the built plugins allow: the method fits the target, the
model class has what the calibration and evaluations need, every checkpoint and dataset can be
had, the calibration files read."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from ecoflap_exp.config_schema import check_config
from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.finetune.trainer import FineTuning
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.oneshot import Target
from ecoflap_exp.plugins import Plugins


def validate(cfg: DictConfig) -> Target:
    """Every check of the config's own values, so bad values fail before anything is built."""
    check_config(cfg)
    target = Target.of(cfg.sparsity, cfg.nm, cfg.max_sparsity, cfg.max_sparsity_delta)
    if not cfg.model.get("name"):
        raise UserError("the model config has no `name` (the short name records and tables use, e.g. name: my_llama); "
                        "add one to it")
    if cfg.push_to_hub and not cfg.save_model:
        raise UserError(f"push_to_hub={cfg.push_to_hub} uploads the saved model; add save_model=true")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise UserError(f"device={cfg.device!r} is unknown; use auto, cpu or cuda[:N]")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    return target


def preflight(cfg: DictConfig, target: Target, plugins: Plugins) -> None:
    """Every check the built plugins allow before any model loads."""
    scorer, calib = plugins.method.scorer, plugins.calib
    plugins.method.check(target)
    plugins.method.check_samples(calib.num_samples, calib.batch_size)
    calib.check_count(max(scorer.samples_needed or 0, calib.num_samples))
    model_class = get_class(cfg.model._target_)
    check_fit(model_class, calib, plugins.evals)
    if (finetune := plugins.finetune) is not None:
        check_finetune(finetune, target, model_class, calib)
    model_class.check_checkpoints(cfg.model)
    for ev in plugins.evals.values():
        ev.check_checkpoints()
    for ev in plugins.evals.values():
        ev.check_data()  # a missing or malformed benchmark file stops the run here
    if target.sparsity > 0:  # last, as the dearest: the calibration images are decoded here
        calib.check_data(max(scorer.samples_needed or 0, calib.num_samples))


def check_fit(model_class: type[ModelAdapter], calib: CalibrationSource, evals: dict[str, Evaluation]) -> None:
    """The calibration samples and every eval work with this kind of model (checked on its class)."""
    check_samples_fit(calib, "calib", "calibrates on", model_class)
    for name, ev in evals.items():
        model, missing = ev.missing(model_class)
        if missing:
            raise UserError(f"evals.{name} ({type(ev).__name__}) needs a model with {' and '.join(missing)}, which "
                            f"{model} lacks; choose a suite made for this model")


def check_samples_fit(source: Any, key: str, verb: str, model_class: type[ModelAdapter]) -> None:
    """A calibration source or training split (config key `key`) gives samples the model takes, in a
    view it has."""
    if source.kind not in model_class.sample_kinds:
        raise UserError(f"{key} ({type(source).__name__}) gives {source.kind} but {model_class.__name__} {verb} "
                        f"{', '.join(model_class.sample_kinds)}; choose a {key} made for this model")
    if source.augment == "train" and not model_class.has_train_augmentation:
        raise UserError(f"{key}.augment=train but {model_class.__name__} defines no training augmentation of its "
                        f"images; use {key}.augment=eval")


def check_finetune(finetune: FineTuning, target: Target, model_class: type[ModelAdapter],
                   calib: CalibrationSource) -> None:
    """The fine-tuning fits the target and the model; its training split can be read."""
    if target.nm is not None:
        raise UserError(f"finetune={finetune.mode} with nm={target.nm}: fine-tuning keeps or prunes unstructured "
                        f"weights only; leave nm out")
    finetune.oneshot_sparsity(target.sparsity)
    if (split := finetune.train) is not None:
        check_samples_fit(split, "finetune.train", "trains on", model_class)
        split.check()
    if finetune.use_id:
        if getattr(finetune.id, "granularity", None) != "matrix":
            raise UserError("finetune.use_id=true multiplies each matrix's scores by its own ID; set "
                            "finetune.id.granularity=matrix")
        finetune.id.check_samples(calib.num_samples)
        calib.check_count(max(finetune.id.samples_needed or 0, calib.num_samples))
