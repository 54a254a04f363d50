"""ViT adapters (transformers and timm), ImageFolder data and top-1 accuracy."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from ecoflap_exp.data.images import ImageFolderCalibration
from ecoflap_exp.models.vit import HFViTAdapter, TimmViTAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.verify import verify
from ecoflap_exp.pruning.wanda import WandaPruner

TINY_TIMM = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 4, "num_classes": 3}


def hf_vit():
    return HFViTAdapter(arch="vit_tiny", init="random", image_size=32)


def timm_vit():
    return TimmViTAdapter("vit_tiny_patch16_224", init="random", model_kwargs=TINY_TIMM, image_size=32)


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
