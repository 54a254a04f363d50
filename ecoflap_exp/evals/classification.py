"""Top-1 accuracy of an image classifier's own head on an ImageFolder split (ImageNet val)."""

from __future__ import annotations

import torch

from ecoflap_exp.data.images import decode_images, image_folder
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import ClassLogits
from ecoflap_exp.options import Count, Fraction
from ecoflap_exp.progress import track


class Top1Accuracy(Evaluation):
    needs = (ClassLogits,)

    def __init__(self, root: str, batch_size: Count = 32, limit: Count | None = None, max_bad_fraction: Fraction = 0.0):
        self.root = root
        self.batch_size = batch_size
        self.limit = limit
        self.max_bad_fraction = max_bad_fraction

    def check_data(self) -> None:
        image_folder(self.root)

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        items = image_folder(self.root)[: self.limit]
        correct = total = 0
        starts = range(0, len(items), self.batch_size)
        for i in track(starts, "top-1", total=len(starts)):
            samples = decode_images(items[i : i + self.batch_size], self.max_bad_fraction)
            batch = adapter.collate(samples)
            logits = adapter.logits(batch)
            if not torch.isfinite(logits).all():
                raise UserError("top-1: the model's logits are not finite; the pruned model is broken")
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(samples)
        return {"top1": 100.0 * correct / total}
