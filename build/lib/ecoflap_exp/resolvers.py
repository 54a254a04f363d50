"""OmegaConf resolvers the shipped configs use, so that a run's record (its resolved config) shows
the value actually used rather than a rule:

- `${ecoflap.half_on:${device}}`: float16 where the device is CUDA, float32 on the CPU (CoOp's
  CLIP runs in fp16; CPU half-precision matmuls are slow or missing);
- `${ecoflap.calibration_augment:${model._target_}}`: the view of calibration images the official
  code uses with that model class (its `calibration_augment`: BLIP-2 "train", others "eval");
- `${ecoflap.sparsity_of:${nm},0.5}`: the sparsity an N:M pattern fixes (2:4 -> 0.5), else the
  default, so `nm=1:4` alone runs at 0.75 and an explicit `sparsity=` beside `nm` is checked;
- `${ecoflap.pid:}`: this process's id, which keeps the output folders of two runs started in the
  same second apart.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def half_on(device: str) -> str:
    import torch

    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "float16" if cuda else "float32"


def calibration_augment(target: str) -> str:
    from hydra.utils import get_class

    return get_class(target).calibration_augment


def sparsity_of(nm: str | None, default: float) -> float:
    try:
        n, m = (int(part) for part in str(nm).split(":"))
    except ValueError:  # no N:M, or a malformed one (the runner's check names it)
        return default
    return 1 - n / m if m > 0 else default


def register() -> None:
    OmegaConf.register_new_resolver("ecoflap.half_on", half_on, replace=True)
    OmegaConf.register_new_resolver("ecoflap.calibration_augment", calibration_augment, replace=True)
    OmegaConf.register_new_resolver("ecoflap.sparsity_of", sparsity_of, replace=True)
    OmegaConf.register_new_resolver("ecoflap.pid", os.getpid, replace=True, use_cache=True)
