"""ViT adapters (transformers and timm), ImageFolder data and top-1 accuracy."""

import pytest
import torch
import transformers
from fixtures import write_image_folder
from safetensors.torch import load_file

from ecoflap_exp.data.images import ImageFolderCalibration, SyntheticImageCalibration, image_folder
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.classification import Top1Accuracy
from ecoflap_exp.models.vit import HFViTAdapter, TimmViTAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.pruning.wanda import WandaPruner

TINY_TIMM = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 4, "num_classes": 3}


def hf_vit():
    return HFViTAdapter(arch="vit_tiny", init="random", image_size=32)


def timm_vit():
    return TimmViTAdapter("vit_tiny_patch16_224", init="random", model_kwargs=TINY_TIMM, image_size=32)


@pytest.fixture
def images(tmp_path):
    return write_image_folder(tmp_path / "imagenet")


@pytest.mark.parametrize(("make", "names"), [
    (hf_vit, ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"]),
    (timm_vit, ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
])
def test_blocks_and_matrices_found_by_type(make, names):
    adapter = make()
    (tower,) = adapter.towers()
    assert len(tower.blocks) == 2
    for block in tower.blocks:
        assert [m.name.removeprefix(block.name + ".") for m in block.matrices] == names


@pytest.mark.parametrize("make", [hf_vit, timm_vit])
def test_loss_is_cross_entropy_of_the_logits_and_pruning_is_exact(make, images):
    adapter = make()
    batches = ImageFolderCalibration(str(images), num_samples=8, batch_size=4).batches(adapter)
    assert batches[0]["pixel_values"].shape == (4, 3, 32, 32)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(adapter.logits(batches[0]), batches[0]["labels"])
        assert adapter.loss(batches[0]).item() == pytest.approx(expected.item())
    plan = {b.name: 0.5 for b in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan).run(batches)
    assert verify(adapter, plan, None, reports)["overall"] == pytest.approx(0.5)
    assert all(int((m.weight == 0).sum()) == m.numel // 2 for m in adapter.matrices())
    with torch.no_grad():
        assert torch.isfinite(adapter.logits(batches[0])).all()


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


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no/such/imagenet"):
        ImageFolderCalibration(str(tmp_path / "no/such/imagenet"), num_samples=4, batch_size=4).batches(hf_vit())


def test_corrupt_images_are_skipped_and_counted(images, caplog):
    (images / "n00000000" / "broken.png").write_bytes(b"not a png at all")
    adapter = hf_vit()
    source = ImageFolderCalibration(str(images), num_samples=13, batch_size=1, shuffle=False, max_bad_fraction=0.1)
    with pytest.raises(UserError, match="gave 12 samples"):  # 13 files, one undecodable
        source.batches(adapter)
    assert "broken.png" in caplog.text
    # the broken file (first in class 0) is skipped and the next image taken in its place
    batches = ImageFolderCalibration(str(images), num_samples=12, batch_size=12, shuffle=False,
                                     max_bad_fraction=0.1).batches(adapter)
    assert batches[0]["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    strict = ImageFolderCalibration(str(images), num_samples=12, batch_size=4, shuffle=False, max_bad_fraction=0)
    with pytest.raises(UserError, match="fail to decode"):
        strict.batches(adapter)


def test_synthetic_images_are_seeded():
    adapter = hf_vit()
    a = SyntheticImageCalibration(32, 3, num_samples=4, batch_size=2, seed=1).batches(adapter)
    b = SyntheticImageCalibration(32, 3, num_samples=4, batch_size=2, seed=1).batches(adapter)
    assert torch.equal(a[1]["pixel_values"], b[1]["pixel_values"])


def test_save_and_reload(tmp_path):
    hf = hf_vit()
    hf.save(tmp_path / "hf")
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf")
    pairs = zip(hf.model.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    tm = timm_vit()
    tm.save(tmp_path / "timm")
    reloaded = TimmViTAdapter("vit_tiny_patch16_224", checkpoint=str(tmp_path / "timm" / "model.safetensors"),
                              model_kwargs=TINY_TIMM, image_size=32, seed=5)
    state = load_file(tmp_path / "timm" / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in reloaded.model.state_dict().items())
