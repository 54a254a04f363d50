"""Top-1 accuracy on an ImageFolder split against a direct computation."""

import pytest
import torch

from ecoflap_exp.data.images import image_folder
from ecoflap_exp.evals.classification import Top1Accuracy
from tests.models.test_vit import hf_vit


def test_top1_equals_a_direct_computation(images):
    adapter = hf_vit()
    accuracy = Top1Accuracy(str(images), batch_size=5).evaluate(adapter)["top1"]
    items = image_folder(str(images))
    from PIL import Image

    correct = 0
    with torch.no_grad():
        for path, label in items:
            pixels = adapter.preprocess(Image.open(path).convert("RGB"))[None]
            correct += int(adapter.model(pixel_values=pixels).logits.argmax(-1).item() == label)
    assert accuracy == pytest.approx(100 * correct / len(items))
    assert Top1Accuracy(str(images), limit=3).evaluate(adapter)["top1"] in (0.0, 100 / 3, 200 / 3, 100.0)
