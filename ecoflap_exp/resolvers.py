"""OmegaConf resolvers the shipped configs use, so that a run's record (its resolved config) shows
the value actually used rather than a rule:

- `${ecoflap.half_on:${device}}`: float16 where the device is CUDA, float32 on the CPU (CoOp's
  CLIP runs in fp16; CPU half-precision matmuls are slow or missing);
- `${ecoflap.calibration_augment:${model._target_}}`: the view of calibration images the official
  code uses with that model class (its `calibration_augment`: BLIP-2 "train", others "eval").
"""

from __future__ import annotations

from omegaconf import OmegaConf


def half_on(device: str) -> str:
    import torch

    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "float16" if cuda else "float32"


def calibration_augment(target: str) -> str:
    from hydra.utils import get_class

    return get_class(target).calibration_augment


def register() -> None:
    OmegaConf.register_new_resolver("ecoflap.half_on", half_on, replace=True)
    OmegaConf.register_new_resolver("ecoflap.calibration_augment", calibration_augment, replace=True)
