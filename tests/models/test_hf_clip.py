"""The same tiny CLIP in open_clip and in transformers is pruned identically.

open_clip keeps q, k, v in one fused in_proj_weight and hides out_proj's input from hooks; the
transformers model has four nn.Linear layers. Copying the open_clip weights into a CLIPModel of the
same architecture and pruning both with Wanda must give the same masks, matrix by matrix, when
open_clip's in_proj is split into its q, k, v slices (`split_qkv=True`; by default it is one
matrix, as ECoFLaP's CoOp pruner has it).
"""

import pytest
import torch
from PIL import Image

from ecoflap_exp.models.hf_clip import HFCLIPAdapter
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from tests.fixtures import CAPTIONS


def open_clip_to_hf(oc: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    out = {
        "logit_scale": oc["logit_scale"],
        "text_model.embeddings.token_embedding.weight": oc["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": oc["positional_embedding"],
        "text_model.final_layer_norm.weight": oc["ln_final.weight"],
        "text_model.final_layer_norm.bias": oc["ln_final.bias"],
        "text_projection.weight": oc["text_projection"].t(),
        "vision_model.embeddings.class_embedding": oc["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": oc["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": oc["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": oc["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": oc["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": oc["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": oc["visual.ln_post.bias"],
        "visual_projection.weight": oc["visual.proj"].t(),
    }
    for src, dst in (("visual.transformer.resblocks", "vision_model.encoder.layers"),
                     ("transformer.resblocks", "text_model.encoder.layers")):
        for i in range(2):
            s, d = f"{src}.{i}", f"{dst}.{i}"
            for part, (a, b) in zip("qkv", ((0, width), (width, 2 * width), (2 * width, 3 * width)), strict=True):
                out[f"{d}.self_attn.{part}_proj.weight"] = oc[f"{s}.attn.in_proj_weight"][a:b]
                out[f"{d}.self_attn.{part}_proj.bias"] = oc[f"{s}.attn.in_proj_bias"][a:b]
            pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                     "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
            for a, b in pairs.items():
                for kind in ("weight", "bias"):
                    out[f"{d}.{b}.{kind}"] = oc[f"{s}.{a}.{kind}"]
    return out


HF_NAME = {"attn.in_proj.q": "self_attn.q_proj", "attn.in_proj.k": "self_attn.k_proj",
           "attn.in_proj.v": "self_attn.v_proj", "attn.out_proj": "self_attn.out_proj",
           "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def twin_models():
    """The tiny architecture in both libraries, with OpenAI CLIP's QuickGELU (the activation its weights,
    which both configs of the ViT-B/16 load, were trained with)."""
    oc = OpenCLIPAdapter("clip_tiny", init="random", split_qkv=True)
    hf = HFCLIPAdapter(arch="clip_tiny", init="random", tokenizer="open_clip")
    assert {type(b.mlp.gelu).__name__ for b in oc.model.transformer.resblocks} == {"QuickGELU"}
    assert {type(layer.mlp.activation_fn).__name__ for layer in hf.model.text_model.encoder.layers} == {
        "QuickGELUActivation"}
    missing, unexpected = hf.model.load_state_dict(open_clip_to_hf(oc.model.state_dict(), 32), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return oc, hf


def batches(adapter):
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(8)]
    samples = list(zip(images, CAPTIONS, strict=True))
    return [adapter.collate(samples[i : i + 4]) for i in (0, 4)]


def test_twins_compute_the_same_embeddings_and_loss():
    oc, hf = twin_models()
    a, b = batches(oc)[0], batches(hf)[0]
    torch.testing.assert_close(a["image"], b["pixel_values"])
    assert torch.equal(a["text"], b["input_ids"])
    with torch.no_grad():
        hf_image = hf.model.visual_projection(hf.model.vision_model(pixel_values=b["pixel_values"]).pooler_output)
        hf_text = hf.model.text_projection(hf.model.text_model(input_ids=b["input_ids"]).pooler_output)
        torch.testing.assert_close(oc.model.encode_image(a["image"]), hf_image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(oc.model.encode_text(a["text"]), hf_text, rtol=1e-4, atol=1e-5)
        assert oc.loss(a).item() == pytest.approx(hf.loss(b).item(), rel=1e-4)


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
def test_open_clip_and_transformers_prune_identically(pruner):
    oc, hf = twin_models()
    SequentialEngine(oc, pruner, {b.name: 0.5 for b in oc.blocks()}).run(batches(oc))
    SequentialEngine(hf, pruner, {b.name: 0.5 for b in hf.blocks()}).run(batches(hf))
    hf_matrices = {m.name: m for m in hf.matrices()}
    for tower_oc, tower_hf in zip(oc.towers(), hf.towers(), strict=True):
        for block_oc, block_hf in zip(tower_oc.blocks, tower_hf.blocks, strict=True):
            for m in block_oc.matrices:
                twin = hf_matrices[f"{block_hf.name}.{HF_NAME[m.name.removeprefix(block_oc.name + '.')]}"]
                assert torch.equal(m.weight == 0, twin.weight == 0), m.name
                torch.testing.assert_close(m.weight, twin.weight, rtol=1e-4, atol=1e-5)
