"""Keys nothing reads are errors: a typo (`+foo=1`, `+scorer.epz=0.001`) must not run to the end
with the value silently unused.

Top-level keys are checked against the primary config's (`TOP_LEVEL_KEYS`, held to configs/config.yaml
by a test); every node with a `_target_` against the parameters of what it builds, before it is
built, so the message names the node and the nearest parameter instead of Hydra's
InstantiationException text.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from ecoflap_exp.errors import UserError

#: the keys of the composed primary config (configs/config.yaml with its groups)
TOP_LEVEL_KEYS = ("calib", "data", "allocation", "scorer", "pruner", "evals", "logger", "finetune", "model",
                  "sparsity", "nm", "max_sparsity", "max_sparsity_delta", "experiment_name", "seed", "device",
                  "threads", "offload", "pads_in_stats", "cache_gb", "save_model", "push_to_hub", "force", "paths")
PATHS_KEYS = ("root", "results_dir", "scores_dir", "models_dir", "checkpoints_dir", "data_root", "weights_dir")
#: keys Hydra itself reads in a node it instantiates
HYDRA_NODE_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")


def nearest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def unknown(key: str, where: str, known: Iterable[str]) -> UserError:
    known = sorted(known)
    return UserError(f"{where}{key} is not a key anything reads; {nearest(key, known)}"
                     f"known keys: {', '.join(known)}")


def parameters(target: str) -> tuple[set[str], bool]:
    """The keyword parameters of what `target` builds, and whether it takes **kwargs."""
    try:
        built = get_object(target)
    except Exception as err:  # noqa: BLE001 - any import failure is the same bad value for the user
        raise UserError(f"_target_={target!r} cannot be imported ({type(err).__name__}: {err})") from None
    # a class whose __init__ passes **kwargs on takes its base classes' parameters too
    initialisers = [c.__init__ for c in built.__mro__ if "__init__" in vars(c) and c is not object] \
        if isinstance(built, type) else [built]
    names: set[str] = set()
    for initialiser in initialisers or [built]:
        parameters_of = inspect.signature(initialiser).parameters.values()
        names |= {p.name for p in parameters_of if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters_of):
            return names, False
    return names, True


def check_node(node: Any, where: str) -> None:
    """Every `_target_` node in `node` (recursively) has only keys its target takes."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_node(item, f"{where}{i}.")
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        names, takes_any = parameters(node._target_)
        if not takes_any:
            for key in node:
                if key not in names and key not in HYDRA_NODE_KEYS:
                    raise unknown(key, where, names)
    for key in node:
        check_node(node._get_node(key), f"{where}{key}.")


def check_keys(cfg: DictConfig) -> None:
    """UserError naming the first key that nothing reads, and the nearest known one."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and key != "hydra":
            raise unknown(key, "", TOP_LEVEL_KEYS)
    for key in cfg.get("paths") or {}:
        if key not in PATHS_KEYS:
            raise unknown(key, "paths.", PATHS_KEYS)
    for group in ("calib", "scorer", "allocation", "pruner", "model", "logger", "finetune"):
        check_node(cfg._get_node(group), f"{group}.")
    for name in cfg.get("evals") or {}:
        check_node(cfg.evals._get_node(name), f"evals.{name}.")
