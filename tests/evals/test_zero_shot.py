"""Zero-shot classification on an ImageFolder split with CLIP embeddings (CoOp datasets: test_coop.py)."""

import pytest
import torch
import torch.nn.functional as F

from ecoflap_exp.data.images import image_folder
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.zero_shot import ZeroShotClassification
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from tests.fixtures import write_image_folder


def test_zero_shot_equals_a_direct_computation(tmp_path):
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    names = ["cat", "dog", "car"]
    evaluation = ZeroShotClassification(str(root), classnames=names, templates=("a photo of a {}.", "a {}"),
                                        batch_size=4)
    top1 = evaluation.evaluate(adapter)["top1"]
    from PIL import Image

    with torch.no_grad():
        weights = []
        for name in names:
            tokens = adapter.tokenizer([f"a photo of a {name}.", f"a {name}"])
            text = F.normalize(adapter.model.encode_text(tokens), dim=-1)
            weights.append(F.normalize(text.mean(0), dim=-1))
        correct = 0
        for path, label in image_folder(str(root)):
            image = F.normalize(adapter.model.encode_image(adapter.preprocess(Image.open(path))[None]), dim=-1)
            correct += int((image @ torch.stack(weights).t()).argmax().item() == label)
    assert top1 == pytest.approx(100 * correct / 9)
    with pytest.raises(UserError, match="2 class names for 3 class folders"):
        ZeroShotClassification(str(root), classnames=["a", "b"]).evaluate(adapter)
