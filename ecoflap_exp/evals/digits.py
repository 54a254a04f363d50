"""The embedded default's benchmark: zero-shot digit classification (10 class prompts, all
templates averaged) and image-text retrieval on the digits test split, through the same protocol
code as the real zero-shot and retrieval benchmarks."""

from __future__ import annotations

import torch

from ecoflap_exp.data.digits import CLASS_NAMES, TEMPLATES, digits_split
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.evals.retrieval import retrieval_recalls
from ecoflap_exp.evals.zero_shot import class_embeddings, embed_images, zero_shot_top1
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import ImageTextEmbeddings
from ecoflap_exp.options import Count


class DigitsEval(Evaluation):
    needs = (ImageTextEmbeddings,)

    def __init__(self, batch_size: Count = 128, limit: Count | None = None):
        self.batch_size = batch_size
        self.limit = limit

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        images, labels = digits_split()["test"]
        images, labels = images[: self.limit], labels[: self.limit]
        features = embed_images(adapter, images, self.batch_size)
        metrics = {"acc": zero_shot_top1(features, labels, class_embeddings(adapter, CLASS_NAMES, TEMPLATES))}
        # retrieval between the test images and one caption per class: TR@1 asks whether an image's
        # best caption is of its class, IR@1 whether a caption's best image is of its class
        captions = [TEMPLATES[0].format(name) for name in CLASS_NAMES]
        positives = torch.tensor(labels)[:, None] == torch.arange(len(CLASS_NAMES))[None, :]
        recalls = retrieval_recalls(adapter, features, captions, positives, (1,), self.batch_size)
        metrics.update({"tr@1": recalls["tr@1"], "ir@1": recalls["ir@1"]})
        return metrics
