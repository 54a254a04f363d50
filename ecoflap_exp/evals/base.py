"""An evaluation: one benchmark's reader + protocol + metric, run on the in-memory model.

`OnCompanion` runs an evaluation on another model that first receives the pruned model's weights:
ECoFLaP prunes the pretrained BLIP-2 once and scores NoCaps with the COCO-finetuned captioner and
Flickr30k with the COCO-finetuned retrieval model, each carrying the pruned ViT (and FlanT5). Its
code copies them only from a pruned model: the dense row is each companion as released (BLIP-2
fine-tuned the ViT of both COCO models), so an unpruned model's weights are not transferred.
"""

from __future__ import annotations

import gc
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Any

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import describe
from ecoflap_exp.options import Typed
from ecoflap_exp.results.records import LOADED_SPARSE


class Evaluation(Typed, ABC):
    option_group = "eval"
    #: the prefix of this evaluation's metrics in the record ("" for its suite entry's name)
    name: str = ""
    #: the capabilities (models.capabilities Protocols) this evaluation needs of a model, checked
    #: before any pruning
    needs: tuple[type, ...] = ()
    #: what the run record keeps beside the metrics (the normaliser or lemmatiser used, files
    #: written); an evaluation that reports something assigns its own dict
    info: Mapping[str, str] = MappingProxyType({})

    def check_data(self) -> None:
        """Read the benchmark's annotations and check that its images exist, so missing or
        malformed data stops the run before pruning (evaluations that read files implement it)."""
        return None

    def check_checkpoints(self) -> None:
        """Check that every checkpoint this evaluation loads can be had (a companion model's), so a
        missing one stops the run before any model loads."""
        return None

    @abstractmethod
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        """Metric name -> value. Raise UserError for missing/malformed data, and for a NaN/inf
        loss or score (never report it as a number)."""

    def missing(self, model_class: type[ModelAdapter]) -> tuple[str, list[str]]:
        """The model class this evaluation runs on (given the pruned model's), and the capabilities
        it needs that the class lacks; checked on the class, so before any model loads."""
        return model_class.__name__, [describe(need) for need in self.needs if not issubclass(model_class, need)]


def evaluate_suite(evals: Mapping[str, Evaluation], adapter: ModelAdapter) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, eval info) of every evaluation of the suite on the model; metrics are named
    `<eval>/<metric>`, and a NaN/inf one is a UserError (the pruned model is broken)."""
    metrics: dict[str, float] = {}
    for name, ev in evals.items():
        metrics.update({f"{ev.name or name}/{k}": v for k, v in ev.evaluate(adapter).items()})
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise UserError(f"evaluation gave non-finite metrics {bad}; the pruned model is broken")
    return metrics, {name: dict(ev.info) for name, ev in evals.items() if ev.info}


class ReadsSplit(Evaluation):
    """An evaluation of a split it reads from files: `read()` reads it (the first `limit` samples)
    and checks it (annotations well formed, images present); `evaluated` holds it, read once, and
    the run reads it before any pruning."""

    @abstractmethod
    def read(self) -> Any:
        """The evaluated samples, read and checked."""

    @cached_property
    def evaluated(self) -> Any:
        return self.read()

    def check_data(self) -> None:
        self.evaluated  # noqa: B018 - reads and checks the split once


class OnCompanion(Evaluation):
    """`evaluation` run on `companion` (a model config built with `_partial_: true`, so it loads
    only when this evaluation runs, after pruning). A pruned model (the prunable weights of the towers
    it prunes at least LOADED_SPARSE zeros: pruned by the run, or a pruned checkpoint loaded) first copies into the
    companion its weights whose names start with one of `transfer`, by default (None) the
    companion's own `transfer_prefixes`, the key set the official evaluation transfers; an
    unpruned one leaves the companion as released. `info["companion"]` says which."""

    def __init__(self, evaluation: Evaluation, companion: Callable[[], ModelAdapter],
                 transfer: list[str] | None = None):
        self.evaluation = evaluation
        self.companion = companion
        self.transfer = list(transfer) if transfer is not None else None
        self.how: dict[str, str] = {}

    @property
    def info(self) -> Mapping[str, str]:
        return {**self.evaluation.info, **self.how}

    @property
    def name(self) -> str:
        return self.evaluation.name

    def check_checkpoints(self) -> None:
        self.companion_class().check_checkpoints(getattr(self.companion, "keywords", {}))

    def check_data(self) -> None:
        self.evaluation.check_data()

    def companion_class(self) -> type[ModelAdapter]:
        return getattr(self.companion, "func", self.companion)

    def missing(self, model_class: type[ModelAdapter]) -> tuple[str, list[str]]:
        cls = self.companion_class()
        return cls.__name__, [describe(need) for need in self.evaluation.needs if not issubclass(cls, need)]

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        self.how = {}
        companion = self.companion()
        if adapter.zero_share() >= LOADED_SPARSE:
            prefixes = self.transfer if self.transfer is not None else companion.transfer_prefixes
            companion.load_weights(adapter.model.state_dict(), prefixes, f"the pruned {type(adapter).__name__}")
            self.how = {"companion": "transferred"}
        else:
            self.how = {"companion": "released"}
        companion.to(adapter.device)
        try:
            return self.evaluation.evaluate(companion)
        finally:
            del companion
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
