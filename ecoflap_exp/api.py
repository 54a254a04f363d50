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
scores through the same `scores_for` and prunes with the same engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from ecoflap_exp.allocation.base import Allocation, Groups, Sketches
from ecoflap_exp.config_schema import check_node
from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.pruning.base import LocalPruner
from ecoflap_exp.pruning.engine import Plan, SequentialEngine
from ecoflap_exp.pruning.masks import check_sparsity, nm_sparsity, parse_nm
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.scoring.base import BlockScorer, first_samples, samples_in
from ecoflap_exp.scoring.sketches import weight_sketches
from ecoflap_exp.tower_outputs import DEFAULT_BUDGET_GB, tower_outputs

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def wrapping_adapters() -> tuple[type[ModelAdapter], ...]:
    """The adapters that wrap an already-loaded model, tried in order (imported here, on first
    use: their libraries would double the command line's start-up)."""
    from ecoflap_exp.models.causal_lm import CausalLMAdapter
    from ecoflap_exp.models.open_clip import OpenCLIPAdapter
    from ecoflap_exp.models.vit import HFViTAdapter, TimmViTAdapter

    return CausalLMAdapter, OpenCLIPAdapter, TimmViTAdapter, HFViTAdapter


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
    """The model's adapter: itself if it is one, else the named adapter class's or the first of
    wrapping_adapters() that wraps it, around the model as it is (nothing loads)."""
    if isinstance(model, ModelAdapter):
        return model
    if adapter is None:
        adapter = next((cls for cls in wrapping_adapters() if cls.wraps(model)), None)
    if adapter is None:
        known = ", ".join(cls.__name__ for cls in wrapping_adapters())
        raise UserError(f"no adapter wraps a {type(model).__module__}.{type(model).__name__}; pass adapter=<one of "
                        f"{known}> or an adapter built from its config")
    return adapter.wrapping(model, **settings)


def check_weights(adapter: ModelAdapter) -> None:
    """UserError for a model that cannot be pruned as it is: weights on the meta device (never
    loaded) or NaN/inf weights (a broken checkpoint)."""
    params = list(adapter.model.named_parameters())
    meta = [name for name, p in params if p.is_meta]
    if meta:
        raise UserError(f"{len(meta)} parameters ({', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''}) are on the "
                        f"meta device: the model was never loaded; load its weights (or materialise it) first")
    bad = [name for name, p in params if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"the loaded model holds NaN/inf weights in {len(bad)} parameters ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}): the checkpoint is broken; re-download or re-save it")


def check_token_ids(adapter: ModelAdapter, ids: torch.Tensor) -> None:
    """Calibration token ids are integers the model's embedding has rows for."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise UserError(f"calibration token ids are {ids.dtype}; pass integer ids (torch.long), as a tokenizer gives")
    embeddings = getattr(adapter.model, "get_input_embeddings", lambda: None)()
    rows = getattr(embeddings, "num_embeddings", None)
    if ids.numel() and (int(ids.min()) < 0 or (rows is not None and int(ids.max()) >= rows)):
        raise UserError(f"calibration token ids run from {int(ids.min())} to {int(ids.max())}, outside the model's "
                        f"vocabulary of {rows} ids; tokenize with the model's own tokenizer")


def batches_of(adapter: ModelAdapter, calibration: Any, batch_size: int, count: int | None) -> tuple[
        list[Batch], list[Batch]]:
    """(the pruner's batches, the batches drawn on to `count` samples for a scorer that reads more)."""
    if isinstance(calibration, CalibrationSource):
        extended = calibration.batches(adapter, count)
        return first_samples(extended, calibration.num_samples), extended
    items = list(calibration)
    if not items:
        raise UserError("calibration is empty; pass token-id tensors, batches or a calibration source")
    for item in items:
        if isinstance(item, torch.Tensor):
            check_token_ids(adapter, item)
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
    return batches, batches


def selected_plan(plan: Plan, adapter: ModelAdapter, sparsity: float | dict[str, float],
                  targets: Sequence[str] | None, ignore: Sequence[str] | None) -> Plan:
    """The plan restricted to the chosen matrices: per-matrix sparsities from a {regex: p} dict
    (first match wins), and matrices outside `targets` or inside `ignore` at 0."""
    out = dict(plan)
    for block in adapter.blocks():
        for m in block.matrices:
            if isinstance(sparsity, dict):
                out[m.name] = next((p for pattern, p in sparsity.items() if re.search(pattern, m.name)), 0.0)
            chosen = (targets is None or any(re.search(t, m.name) for t in targets)) and not any(
                re.search(i, m.name) for i in ignore or ())
            if not chosen:
                out[m.name] = 0.0
    return out


def check_selection(adapter: ModelAdapter, per_matrix: dict[str, float] | None, targets: Sequence[str] | None,
                    ignore: Sequence[str] | None) -> None:
    """UserError when the regexes choosing the pruned matrices leave none (the model would stay
    dense and be reported as pruned)."""
    names = [m.name for m in adapter.matrices()]
    kept = [n for n in names if not any(re.search(i, n) for i in ignore or ())]
    hint = f"(the model would stay dense); matrix names look like {names[0]!r}"
    if not kept:
        raise UserError(f"ignore={list(ignore or ())} matches every matrix {hint}")
    for what, patterns in (("sparsity", per_matrix), ("targets", targets)):
        if patterns is not None and not any(re.search(p, n) for p in patterns for n in kept):
            raise UserError(f"{what}={patterns} matches no matrix left to prune {hint}")


def method_name(scorer: BlockScorer, allocation: Allocation, pruner: LocalPruner) -> str:
    """The method as the papers name it: `wanda`, `ecoflap-zeroth+wanda`, `id-global-wanda+wanda`."""
    choice = "-".join(part for part in (scorer.name, allocation.name) if part)
    return f"{choice}+{pruner.name}" if choice else pruner.name


def scores_for(adapter: ModelAdapter, batches: list[Batch], extended: list[Batch], scorer: BlockScorer,
               allocation: Allocation, redraw: Redraw | None = None) -> tuple[dict[str, float], Sketches | None]:
    """The block scores, and the weight sketches the allocation ranks (None if it needs none):
    what does not depend on the sparsity (the runner caches it across a sweep)."""
    scores = scorer.scores(adapter, batches, extended, redraw)
    sketches = (weight_sketches(adapter, batches, allocation.sketch_score, allocation.sketch_quantiles)
                if allocation.sketch_quantiles else None)
    return scores, sketches


def plan_for(adapter: ModelAdapter, batches: list[Batch], extended: list[Batch], scorer: BlockScorer,
             allocation: Allocation, sparsity: float, max_sparsity: float, redraw: Redraw | None = None
             ) -> tuple[dict[str, float], Plan]:
    """The block scores and the allocation's plan of them."""
    scores, sketches = scores_for(adapter, batches, extended, scorer, allocation, redraw)
    return scores, allocation.plan(scores, Groups.of(adapter), sparsity, max_sparsity, sketches)


def prune(model: nn.Module | ModelAdapter, calibration: Any, *, scorer: str = "uniform", pruner: str = "wanda",
          allocation: str | None = None, sparsity: float | dict[str, float] | None = None, nm: str | None = None,
          max_sparsity: float | None = None, targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None,
          batch_size: int = 8, adapter: type[ModelAdapter] | None = None, overrides: Sequence[str] = (),
          cache_gb: float = DEFAULT_BUDGET_GB, redraw: bool = False, **adapter_settings: Any) -> PruneReport:
    """Prune `model` in place and report what was done (see the module's docstring)."""
    pattern = parse_nm(nm)
    per_matrix = isinstance(sparsity, dict)
    if per_matrix:
        for pattern_of_names, p in sparsity.items():
            check_sparsity(p, f"sparsity[{pattern_of_names!r}]")
        target = 0.0
    elif pattern is not None:
        target = nm_sparsity(pattern, None if sparsity is None else check_sparsity(sparsity))
    else:
        target = check_sparsity(0.5 if sparsity is None else sparsity)
    if (per_matrix or pattern is not None) and scorer != "uniform":
        raise UserError(f"scorer={scorer} plans block sparsities, but sparsity={sparsity} / nm={nm} fixes them; use "
                        f"scorer='uniform'")
    wrapped = adapter_of(model, adapter, **adapter_settings)
    check_weights(wrapped)
    check_selection(wrapped, sparsity if per_matrix else None, targets, ignore)
    cfg = composed(scorer, pruner, allocation, overrides)
    for group in ("scorer", "allocation", "pruner"):  # typed and checked as the command line checks them
        check_node(cfg._get_node(group), f"{group}.")
    block_scorer, allocator, local_pruner = build(cfg.scorer), build(cfg.allocation), build(cfg.pruner)
    if redraw and not isinstance(calibration, CalibrationSource):
        raise UserError("redraw=True draws the calibration again, which needs a calibration source "
                        "(ecoflap_exp.data); pass one, or leave redraw out")
    batches, extended = batches_of(wrapped, calibration, batch_size, block_scorer.samples_needed)
    draws = calibration.redrawing(wrapped) if redraw else None
    ceiling = max_sparsity if max_sparsity is not None else min(target + cfg.max_sparsity_delta, 1.0)
    with tower_outputs(wrapped, cache_gb):
        if per_matrix:
            scores, plan = {}, dict.fromkeys((b.name for b in wrapped.blocks()), 0.0)
        else:
            scores, plan = plan_for(wrapped, batches, extended, block_scorer, allocator, target, ceiling, draws)
        if per_matrix or targets is not None or ignore:
            plan = selected_plan(plan, wrapped, sparsity, targets, ignore)
        reports = SequentialEngine(wrapped, local_pruner, plan, pattern, wrapped.device).run(batches, draws)
    achieved = verify(wrapped, plan, pattern, reports, exact=local_pruner.count == "exact")
    return PruneReport(method_name(block_scorer, allocator, local_pruner), scores, plan, achieved,
                       [r.as_dict() for r in reports], dict(block_scorer.info))
