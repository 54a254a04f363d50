"""Perplexity of a causal LM, the SparseGPT/Wanda protocol (wanda lib/eval.py eval_ppl_wikitext,
sparsegpt llama_eval).

- WikiText-2: the test rows joined with "\\n\\n", tokenised once with the tokenizer's special
  tokens (LLaMA: one BOS at the very start, none per window).
- C4 validation: `' '.join` of the first 1,100 documents of en/c4-validation.00000-of-00008.json.gz,
  truncated to 256 * seqlen tokens (here: `max_documents=1100`, `joiner=" "`, `limit=256`).
- n = numel // seqlen non-overlapping windows (no stride, tail dropped); per window the mean
  next-token cross-entropy over its seqlen-1 predicted positions.

The reference multiplies each window's mean loss by seqlen although seqlen-1 tokens were scored,
then divides the sum by n * seqlen: ppl = exp(sum_i CE_i * seqlen / (n * seqlen)). Every window
scores the same number of tokens, so the factor cancels and that equals exp of the mean loss over
all scored tokens, which is what we compute (tests check it against the reference formula).
Remaining differences are numeric only: transformers computes the loss from float32 logits
where the reference takes CE of fp16 logits.
"""

from __future__ import annotations

import math

import torch

from ecoflap_exp.data.text import check_source, read_documents
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import Tokenizes
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track


class Perplexity(Evaluation):
    needs = (Tokenizes,)

    def __init__(self, source: str, seqlen: Count, batch_size: Count = 1, limit: Count | None = None,
                 joiner: str = "\n\n", max_documents: Count | None = None, special_tokens: bool = True,
                 how_to_get: str | None = None):
        """`limit`: at most this many windows (the C4 protocol's 256); `max_documents`: join only
        the first documents of the source (C4's 1,100)."""
        self.source = check_source(source, how_to_get)
        self.seqlen = seqlen
        self.batch_size = batch_size
        self.limit = limit
        self.joiner = joiner
        self.max_documents = max_documents
        self.special_tokens = special_tokens
        self.how_to_get = how_to_get

    def token_ids(self, adapter: Tokenizes) -> torch.Tensor:
        """The whole evaluation text as one 1-D tensor of token ids."""
        docs = read_documents(self.source, self.how_to_get)[: self.max_documents]
        return adapter.tokenize(self.joiner.join(docs), self.special_tokens)

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        ids = self.token_ids(adapter)
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
