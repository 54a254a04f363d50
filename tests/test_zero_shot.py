"""Zero-shot classification and image-text retrieval on CLIP embeddings."""

import pytest
import torch
import torch.nn.functional as F
from fixtures import write_caption_pairs, write_image_folder

from ecoflap_exp.data.images import image_folder
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.zero_shot import ImageTextRetrieval, ZeroShotClassification, recall_at_k
from ecoflap_exp.models.open_clip import OpenCLIPAdapter


def test_recall_on_a_matrix_worked_by_hand():
    # 3 images x 4 captions; image 0 owns captions 0 and 1, image 1 owns 2, image 2 owns 3
    similarity = torch.tensor([[0.1, 0.9, 0.5, 0.2],    # best caption 1 (own): rank 0
                               [0.8, 0.1, 0.3, 0.9],    # order 3, 0, 2: own caption 2 at rank 2
                               [0.7, 0.2, 0.6, 0.1]])   # order 0, 2, 1, 3: own caption 3 at rank 3
    positives = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert recall_at_k(similarity, positives, (1, 3, 4)) == pytest.approx({1: 100 / 3, 3: 200 / 3, 4: 100.0})
    # captions as queries: c0 -> images [1, 2, 0]: own (0) at rank 2; c1 -> [0, ...]: rank 0;
    # c2 -> [2, 0, 1]: own (1) at rank 2; c3 -> [1, 0, 2]: own (2) at rank 2
    assert recall_at_k(similarity.t(), positives.t(), (1, 2, 3)) == pytest.approx({1: 25.0, 2: 25.0, 3: 100.0})


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


def test_retrieval_runs_on_caption_files(tmp_path):
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    files = write_caption_pairs(tmp_path, count=6)
    metrics = ImageTextRetrieval(str(files["json"]), batch_size=4).evaluate(adapter)
    assert set(metrics) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean"}
    assert metrics["tr@10"] == metrics["ir@10"] == 100.0  # 6 images, 6 captions: all within 10
    assert metrics == ImageTextRetrieval(str(files["tsv"]), batch_size=3).evaluate(adapter)
