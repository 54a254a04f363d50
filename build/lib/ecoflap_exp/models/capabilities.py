"""What evaluations ask of a model beyond the pruning seam, as runtime-checkable Protocols.

An evaluation lists the capabilities it needs in `needs`; the runner checks them (isinstance for
the model, issubclass for a companion model's class) before any weights are pruned. An adapter has
a capability by having its methods. A new evaluation that needs something new adds a Protocol
here and touches no adapter base class.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from ecoflap_exp.models.seam import Batch


def describe(capability: type) -> str:
    """`ClassLogits (logits)`: a capability and the methods it asks for, for messages."""
    methods = [name for name, value in vars(capability).items() if callable(value) and not name.startswith("_")]
    return f"{capability.__name__} ({', '.join(methods)})"


@runtime_checkable
class Tokenizes(Protocol):
    """Language models: text calibration and perplexity tokenise with the model's tokenizer."""

    def tokenize(self, text: str, special_tokens: bool = False) -> torch.Tensor:
        """Text -> 1-D token ids; with `special_tokens`, as the tokenizer's defaults add them
        (LLaMA: one BOS first)."""
        ...


@runtime_checkable
class TokenLogits(Protocol):
    """Causal language models that lm-evaluation-harness can wrap: the transformers model (whose
    forward gives next-token logits) and its tokenizer."""

    def transformers_lm(self) -> tuple[Any, Any]:
        """(the in-memory transformers causal LM, its tokenizer)."""
        ...


@runtime_checkable
class ClassLogits(Protocol):
    """Image classifiers: top-1 accuracy."""

    def logits(self, batch: Batch) -> torch.Tensor:
        """Class logits of a batch."""
        ...


@runtime_checkable
class ImageTextEmbeddings(Protocol):
    """CLIP-style models: zero-shot classification and cosine retrieval."""

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings of images (images, dim; or images, queries, dim)."""
        ...

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings of texts."""
        ...


@runtime_checkable
class GeneratesFromImages(Protocol):
    """Generative image-text models: VQA answers and captions."""

    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        """The text generated for each (image, prompt) pair, decoded and stripped. `generation`
        holds decoding settings in LAVIS's terms: num_beams, max_new_tokens, min_length,
        length_penalty, repetition_penalty."""
        ...


@runtime_checkable
class ImageTextMatching(Protocol):
    """BLIP-2's retrieval model: ITC features per query and an ITM head to re-rank with."""

    def image_states(self, images: list[Image.Image]) -> torch.Tensor:
        """Vision-encoder outputs (images, tokens, width), computed once per image."""
        ...

    def features_from_states(self, states: torch.Tensor) -> torch.Tensor:
        """L2-normalised contrastive (ITC) features (images, queries, dim) of `image_states`; an
        image's similarity to a text is the maximum over its queries."""
        ...

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised ITC embeddings of texts."""
        ...

    def itm_scores(self, states: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Image-text matching logit (of the "match" class, averaged over the queries) of each of
        K pairs (states[k], texts[k]): a tensor of K scores."""
        ...
