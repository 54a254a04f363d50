"""The config's schema, checked in one place before anything is built or loaded.

Each node with a `_target_` is checked against the signature of what it builds: a key it does not
take is an error naming the nearest one (a typo such as `+scorer.epz=0.001` must not run to the
end with the value silently unused), and every value is validated against its parameter's type
hint by pydantic, strictly (no string read as a number, no 1 read as true, no NaN or infinity; the
constraints are ecoflap_exp.options' types). The top level is checked the same way against
`top_level` and `paths` below, whose signatures are the schema of configs/config.yaml (held to it
by a test). A bad value ends in one UserError naming the option by its full key, the value given,
and a valid example.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from functools import cache
from typing import Annotated, Any, Literal

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import Field

from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Count, Fraction, NonNegativeFloat, NonNegativeInt, check_value, parameter_hints
from ecoflap_exp.pruning.masks import parse_nm

NonEmpty = Annotated[str, Field(min_length=1)]


def top_level(sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.5, nm: str | None = None,
              max_sparsity: Fraction | None = None, max_sparsity_delta: Fraction = 0.1,
              experiment_name: NonEmpty = "default", seed: NonNegativeInt = 0, device: NonEmpty = "auto",
              threads: Literal["auto"] | Count = "auto", offload: bool = False, pads_in_stats: bool = False,
              redraw_calibration: bool = False, cache_gb: NonNegativeFloat = 4, save_model: bool = False,
              push_to_hub: str | None = None, force: bool = False) -> None:
    """The schema of configs/config.yaml's own values (its groups are checked as nodes)."""


def paths(root: NonEmpty = ".", results_dir: NonEmpty = "results/runs", scores_dir: NonEmpty = "results/scores",
          models_dir: NonEmpty = "results/models", checkpoints_dir: NonEmpty = "results/checkpoints",
          data_root: NonEmpty = "data", weights_dir: NonEmpty = "weights") -> None:
    """The schema of `paths`: folders, never empty (an empty root would write under /results)."""


#: the config groups and nodes of the primary config, beside top_level's values
GROUP_KEYS = ("calib", "data", "allocation", "scorer", "pruner", "evals", "logger", "finetune", "model", "paths")
TOP_LEVEL_KEYS = (*GROUP_KEYS[:-1], *inspect.signature(top_level).parameters, "paths")
PATHS_KEYS = tuple(inspect.signature(paths).parameters)
#: keys Hydra itself reads in a node it instantiates
HYDRA_NODE_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")


def nearest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def unknown(key: str, where: str, known: Iterable[str]) -> UserError:
    known = sorted(known)
    return UserError(f"{where}{key} is not a key anything reads; {nearest(key, known)}"
                     f"known keys: {', '.join(known)}")


@cache
def schema(target: str) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """The keyword parameters of what `target` builds, each with its type hint and default, and
    whether it takes **kwargs it does not name."""
    try:
        built = get_object(target)
    except Exception as err:  # noqa: BLE001 - any import failure is the same bad value for the user
        raise UserError(f"_target_={target!r} cannot be imported ({type(err).__name__}: {err})") from None
    return parameter_hints(built)


def holds_nodes(value: Any) -> bool:
    """Whether a value holds `_target_` nodes (checked as nodes, not as values)."""
    if isinstance(value, DictConfig):
        return "_target_" in value or any(holds_nodes(value._get_node(k)) for k in value)
    if isinstance(value, ListConfig):
        return any(holds_nodes(v) for v in value)
    return False


def resolved(node: DictConfig, key: str, where: str) -> Any:
    """A key's value, interpolations resolved, as plain Python."""
    try:
        value = node[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    except MissingMandatoryValue:
        raise UserError(f"{where}{key} has no value (??? in its config); set it, e.g. {where}{key}=...") from None
    except OmegaConfBaseException as err:
        raise UserError(f"the config does not resolve at {where}{key}: {str(err).splitlines()[0]} (do the chosen "
                        f"model, calib and suite fit together?)") from None


def check_against(node: DictConfig, where: str, found: dict[str, tuple[Any, Any]], takes_any: bool) -> None:
    for key in node:
        if key in HYDRA_NODE_KEYS:
            continue
        if key not in found:
            if takes_any:
                continue
            raise unknown(key, where, found)
        if holds_nodes(node._get_node(key)):
            continue
        check_value(f"{where}{key}", resolved(node, key, where), *found[key])


def check_node(node: Any, where: str) -> None:
    """Every `_target_` node in `node` (recursively): only keys its target takes, each value of its
    parameter's type."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_node(item, f"{where}{i}.")
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        check_against(node, where, *schema(node._target_))
    for key in node:
        check_node(node._get_node(key), f"{where}{key}.")


def check_config(cfg: DictConfig) -> None:
    """UserError naming the first key that nothing reads (and the nearest known one) or the first
    value its parameter's type refuses."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and key != "hydra":
            raise unknown(key, "", TOP_LEVEL_KEYS)
    parse_nm(cfg.get("nm"))  # first: an N:M pattern sets the sparsity the next check reads
    for key, (annotation, default) in parameter_hints(top_level)[0].items():
        if key in cfg:
            check_value(key, resolved(cfg, key, ""), annotation, default)
    if cfg.get("paths") is not None:
        check_against(cfg.paths, "paths.", parameter_hints(paths)[0], False)
    for group in ("calib", "scorer", "allocation", "pruner", "model", "logger", "finetune"):
        check_node(cfg._get_node(group), f"{group}.")
    for name in cfg.get("evals") or {}:
        check_node(cfg.evals._get_node(name), f"evals.{name}.")
