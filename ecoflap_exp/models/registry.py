"""The model families, found rather than listed: every module of ecoflap_exp.models is imported on the
first lookup (not at start-up: the families import transformers models, open_clip and timm) and every
concrete ModelAdapter subclass it defines is a family. Adding a family is adding its module (and its configs).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter


def subclasses(cls: type[ModelAdapter]) -> list[type[ModelAdapter]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]


@cache
def families() -> tuple[type[ModelAdapter], ...]:
    """Every concrete adapter class of the package (the abstract ones are what families share), ordered
    by module and name (import order would depend on what was imported before)."""
    package = importlib.import_module("ecoflap_exp.models")
    for module in pkgutil.iter_modules(package.__path__, "ecoflap_exp.models."):
        importlib.import_module(module.name)
    found = {cls for cls in subclasses(ModelAdapter)
             if cls.__module__.startswith("ecoflap_exp.models.") and not inspect.isabstract(cls)}
    return tuple(sorted(found, key=lambda cls: (cls.__module__, cls.__qualname__)))


def wrapping_adapters() -> tuple[type[ModelAdapter], ...]:
    """The families that wrap an already-loaded model: those that define `wraps`."""
    return tuple(cls for cls in families() if "wraps" in vars(cls))


def adapter_wrapping(model: nn.Module) -> type[ModelAdapter]:
    """The one family whose `wraps` claims `model` (UserError when none does)."""
    claiming = [cls for cls in wrapping_adapters() if cls.wraps(model)]
    if len(claiming) > 1:
        raise RuntimeError(f"{', '.join(cls.__name__ for cls in claiming)} all claim a {type(model).__name__}; a "
                           f"family's `wraps` must claim only its own models")
    if not claiming:
        known = ", ".join(cls.__name__ for cls in wrapping_adapters())
        raise UserError(f"no adapter wraps a {type(model).__module__}.{type(model).__name__}; pass adapter=<one of "
                        f"{known}> or an adapter built from its config")
    return claiming[0]
