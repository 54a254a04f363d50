"""Capabilities are Protocols an adapter satisfies by its methods: each shipped adapter has exactly
the ones its evaluations rely on, and a class that lacks a method lacks the capability."""

import pytest

from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models import capabilities as caps
from ecoflap_exp.models.blip2 import Blip2Adapter, Blip2ITMAdapter
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.models.hf_clip import HFCLIPAdapter
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.models.vit import HFViTAdapter, TimmViTAdapter

ALL = (caps.Tokenizes, caps.TokenLogits, caps.ClassLogits, caps.ImageTextEmbeddings, caps.GeneratesFromImages,
       caps.ImageTextMatching)
EXPECTED = {
    Blip2Adapter: {caps.GeneratesFromImages},
    Blip2ITMAdapter: {caps.ImageTextEmbeddings, caps.ImageTextMatching},
    CausalLMAdapter: {caps.Tokenizes, caps.TokenLogits},
    OpenCLIPAdapter: {caps.ImageTextEmbeddings},
    HFCLIPAdapter: {caps.ImageTextEmbeddings},
    HFViTAdapter: {caps.ClassLogits},
    TimmViTAdapter: {caps.ClassLogits},
}


@pytest.mark.parametrize("adapter", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_adapter_has_exactly_its_capabilities(adapter):
    assert {c for c in ALL if issubclass(adapter, c)} == EXPECTED[adapter]


def test_a_missing_capability_is_named_with_its_methods():
    class NeedsMatching(Evaluation):
        needs = (caps.ImageTextMatching, caps.ImageTextEmbeddings)

        def evaluate(self, adapter):
            return {}

    class EmbeddingsOnly:
        def image_features(self, images):
            return images

        def text_features(self, texts):
            return texts

    assert NeedsMatching().missing(EmbeddingsOnly) == (
        "EmbeddingsOnly", ["ImageTextMatching (image_states, features_from_states, text_features, itm_scores)"])
