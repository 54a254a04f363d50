"""An evaluation: one benchmark's reader + protocol + metric, run on the in-memory model."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ecoflap_exp.models.base import ModelAdapter


class Evaluation(ABC):
    #: optional adapter methods this evaluation calls (checked before any pruning)
    needs: tuple[str, ...] = ()

    @abstractmethod
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        """Metric name -> value. Raise UserError for missing/malformed data, and for a NaN/inf
        loss or score (never report it as a number)."""
