"""Perplexity of a causal LM: the text tokenised once, cut into non-overlapping windows of
`seqlen` tokens (the tail dropped), exp of the mean next-token loss over all windows."""

from __future__ import annotations

import math

import torch

from ecoflap_exp.data.text import read_documents
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.base import ModelAdapter
from ecoflap_exp.progress import track


class Perplexity(Evaluation):
    needs = ("tokenize",)

    def __init__(self, source: str, seqlen: int, batch_size: int = 1, limit: int | None = None,
                 joiner: str = "\n\n"):
        self.source = source
        self.seqlen = seqlen
        self.batch_size = batch_size
        self.limit = limit
        self.joiner = joiner

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        ids = adapter.tokenize(self.joiner.join(read_documents(self.source)))
        n_windows = len(ids) // self.seqlen
        if self.limit is not None:
            n_windows = min(n_windows, self.limit)
        if n_windows == 0:
            raise UserError(f"eval text {self.source!r} has {len(ids)} tokens, fewer than one window of "
                            f"seqlen={self.seqlen}; lower the eval's seqlen")
        windows = ids[: n_windows * self.seqlen].view(n_windows, self.seqlen)
        nll, tokens = 0.0, 0
        starts = range(0, n_windows, self.batch_size)
        for i in track(starts, "perplexity", total=len(starts)):
            chunk = windows[i : i + self.batch_size]
            loss = adapter.loss(adapter.collate(list(chunk))).item()
            if not math.isfinite(loss):
                raise UserError(f"perplexity: the model's loss is {loss} on window {i}; the pruned model "
                                f"is broken (lower the sparsity or check the calibration data)")
            count = chunk.shape[0] * (self.seqlen - 1)
            nll += loss * count
            tokens += count
        return {"ppl": math.exp(nll / tokens)}
