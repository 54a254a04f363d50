"""The Python API: prune an already-loaded model in one call, with the command line's plugins.

    from ecoflap_exp import prune
    report = prune(model, calibration, scorer="zeroth", pruner="wanda", sparsity=0.6)

`model`: a transformers causal LM (LLaMA, OPT, Mistral, Qwen2...), ViTForImageClassification, an
open_clip CLIP, a timm VisionTransformer, or any ModelAdapter (BLIP-2 and transformers' CLIP: build
their adapter, e.g. `Blip2Adapter(checkpoint=...)`). `calibration`: token-id tensors (1-D samples or
2-D batches), collated batches (dicts), raw samples the adapter collates, or a calibration source
(ecoflap_exp.data). `scorer`, `pruner`, `allocation`: the names of the shipped configs
(configs/scorer/*.yaml ...), built with the same defaults as `ecoflap scorer=...`; `overrides`:
further config overrides (`["scorer.eps=1e-4"]`). `sparsity`: a fraction, or {regex: fraction}
per matrix name (unmatched matrices are kept dense); `nm="2:4"`; `targets`/`ignore`: regexes over
matrix names (as llm-compressor's) choosing which matrices are pruned. `redraw=True` (a calibration
source only): each further pass over the data draws fresh training views and prefix splits, as the
official code's DataLoader does (the command line's `redraw_calibration`). The runner (ecoflap_exp.runner)
prunes through the same core (ecoflap_exp.oneshot: the same target, checks and pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from ecoflap_exp.config_schema import check_node
from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.registry import adapter_wrapping
from ecoflap_exp.models.seam import Batch
from ecoflap_exp.oneshot import Calibration, Method, Selection, Target, check_fits, check_weights, prune_with
from ecoflap_exp.plugins import build
from ecoflap_exp.scoring.base import first_samples, samples_in
from ecoflap_exp.tower_outputs import DEFAULT_BUDGET_GB

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class PruneReport:
    """What prune() did: the method's name, the block scores, the plan, the achieved sparsity
    (overall, per tower, block and matrix, and the masks' SHA-1) and one entry per pruned matrix."""

    method: str
    scores: dict[str, float]
    plan: dict[str, float]
    achieved: dict[str, Any]
    matrices: list[dict[str, Any]]
    scorer_info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def composed(scorer: str, pruner: str, allocation: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The shipped config with these scorer, pruner and allocation choices, composed as the command
    line composes it (a scorer config may choose its allocation, as scorer=owl does)."""
    choices = [f"scorer={scorer}", f"pruner={pruner}"] + ([f"allocation={allocation}"] if allocation else [])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose("config", [*choices, *overrides])
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors name the bad choice
            raise UserError(f"cannot compose {' '.join([*choices, *overrides])}: {str(err).splitlines()[0]}") from None


def adapter_of(model: nn.Module | ModelAdapter, adapter: type[ModelAdapter] | None = None,
               **settings: Any) -> ModelAdapter:
    """The model's adapter: itself if it is one, else the named adapter class's or the family's
    that claims it (models.registry), around the model as it is (nothing loads)."""
    if isinstance(model, ModelAdapter):
        return model
    return (adapter or adapter_wrapping(model)).wrapping(model, **settings)


def check_token_ids(adapter: ModelAdapter, ids: torch.Tensor) -> None:
    """Calibration token ids are integers the model's embedding has rows for."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise UserError(f"calibration token ids are {ids.dtype}; pass integer ids (torch.long), as a tokenizer gives")
    embeddings = getattr(adapter.model, "get_input_embeddings", lambda: None)()
    rows = getattr(embeddings, "num_embeddings", None)
    if ids.numel() and (int(ids.min()) < 0 or (rows is not None and int(ids.max()) >= rows)):
        raise UserError(f"calibration token ids run from {int(ids.min())} to {int(ids.max())}, outside the model's "
                        f"vocabulary of {rows} ids; tokenize with the model's own tokenizer")


def calibration_of(adapter: ModelAdapter, calibration: Any, batch_size: int, count: int | None,
                   redraw: bool) -> tuple[Calibration, int, int]:
    """The calibration as batches (the pruner's, and those drawn on to `count` samples for a scorer
    that reads more; with `redraw`, fresh draws per pass), the pruner's sample count and the batch size."""
    if isinstance(calibration, CalibrationSource):
        extended = calibration.batches(adapter, count)
        draws = calibration.redrawing(adapter) if redraw else None
        return (Calibration(first_samples(extended, calibration.num_samples), extended, draws),
                calibration.num_samples, calibration.batch_size)
    if redraw:
        raise UserError("redraw=True draws the calibration again, which needs a calibration source "
                        "(ecoflap_exp.data); pass one, or leave redraw out")
    items = list(calibration)
    if not items:
        raise UserError("calibration is empty; pass token-id tensors, batches or a calibration source")
    for item in items:
        if isinstance(item, torch.Tensor):
            check_token_ids(adapter, item)
    batches: list[Batch]
    if all(isinstance(item, dict) for item in items):
        batches = items
    elif all(isinstance(item, torch.Tensor) and item.dim() == 2 for item in items):
        batches = [adapter.collate(list(item)) for item in items]
    else:
        batches = [adapter.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    held = sum(samples_in(b) for b in batches)
    if count is not None and count > held:
        raise UserError(f"the scorer reads {count} calibration samples but {held} were given; pass more, or a "
                        f"calibration source that can draw them")
    return Calibration(batches), held, samples_in(batches[0])


def prune(model: nn.Module | ModelAdapter, calibration: Any, *, scorer: str = "uniform", pruner: str = "wanda",
          allocation: str | None = None, sparsity: float | dict[str, float] | None = None, nm: str | None = None,
          max_sparsity: float | None = None, targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None,
          batch_size: int = 8, adapter: type[ModelAdapter] | None = None, overrides: Sequence[str] = (),
          cache_gb: float = DEFAULT_BUDGET_GB, redraw: bool = False, **adapter_settings: Any) -> PruneReport:
    """Prune `model` in place and report what was done (see the module's docstring)."""
    per_matrix = sparsity if isinstance(sparsity, dict) else None
    selection = Selection(per_matrix, targets, tuple(ignore or ()))
    if (per_matrix is not None or nm) and scorer != "uniform":
        raise UserError(f"scorer={scorer} plans block sparsities, but sparsity={sparsity} / nm={nm} fixes them; use "
                        f"scorer='uniform'")
    cfg = composed(scorer, pruner, allocation, overrides)
    target = Target.of(None if per_matrix is not None else sparsity, nm, max_sparsity, cfg.max_sparsity_delta)
    wrapped = adapter_of(model, adapter, **adapter_settings)
    check_weights(wrapped)
    check_fits(wrapped, target.nm)
    selection.check(wrapped)
    for group in ("scorer", "allocation", "pruner"):  # typed and checked as the command line checks them
        check_node(cfg._get_node(group), f"{group}.")
    method = Method(build(cfg.scorer), build(cfg.allocation), build(cfg.pruner))
    method.check(target)
    batches, num_samples, held_batch = calibration_of(wrapped, calibration, batch_size, method.scorer.samples_needed,
                                                      redraw)
    method.check_samples(num_samples, held_batch)
    pruned = prune_with(wrapped, batches, method, target, selection=selection, cache_gb=cache_gb)
    return PruneReport(method.name, pruned.scored.scores, pruned.plan, pruned.achieved,
                       [r.as_dict() for r in pruned.reports], pruned.scored.info)
