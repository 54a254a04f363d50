"""The ID paper's BLIP captioner from salesforce/BLIP's own checkpoint file, and its caption protocol.

The original layout is written here from salesforce/BLIP's BLIP_Decoder (models/vit.py timm-style ViT
names, models/med.py BERT names), key by key, as a `.pth` holding {"model": state_dict}; the
adapter must load every weight of it into transformers' BlipForConditionalGeneration at the names
transformers' conversion script gives them, and compute what the weights compute."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.blip import BlipCaptionAdapter
from tests.integration.test_run import ROOT

#: BLIP_Decoder's ViT names -> transformers' (per block N; transcribed from the two codebases' module trees)
VISION = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual_encoder.norm.weight": "vision_model.post_layernorm.weight",
    "visual_encoder.norm.bias": "vision_model.post_layernorm.bias",
}
BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
         "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def original_names(blocks: int) -> dict[str, str]:
    names = dict(VISION)
    for n in range(blocks):
        for old, new in BLOCK.items():
            for kind in ("weight", "bias"):
                names[f"visual_encoder.blocks.{n}.{old}.{kind}"] = f"vision_model.encoder.layers.{n}.{new}.{kind}"
    return names


def tiny(**kw):
    return BlipCaptionAdapter(arch="blip_caption_tiny", **{"init": "random", "tokenizer": "bytes", **kw})


def write_original(path, source, extra=None, drop=None):
    """`source`'s weights in BLIP_Decoder's layout: the ViT renamed back, text_decoder.* as is, plus
    what a real BLIP file also holds (the persistent position_ids buffer, a momentum ViT)."""
    hf = source.model.state_dict()
    state = {old: hf[new].clone() for old, new in original_names(2).items()}
    state |= {k: v.clone() for k, v in hf.items() if k.startswith("text_decoder.")}
    state["text_decoder.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    state["visual_encoder_m.cls_token"] = torch.zeros(1, 1, 32)
    state |= extra or {}
    for key in drop or ():
        del state[key]
    torch.save({"model": state, "epoch": 4, "config": {"image_size": 32}}, path)
    return state


def test_every_weight_of_an_original_blip_file_lands_at_its_transformers_name(tmp_path):
    source = tiny(seed=1)
    state = write_original(tmp_path / "model_base_caption_capfilt_large.pth", source)
    loaded = tiny(checkpoint=str(tmp_path / "model_base_caption_capfilt_large.pth"), init="pretrained", seed=2)
    own = loaded.model.state_dict()
    for old, new in original_names(2).items():
        assert torch.equal(own[new], state[old]), old
    for name, tensor in state.items():
        if name.startswith("text_decoder.") and name != "text_decoder.bert.embeddings.position_ids":
            assert torch.equal(own[name], tensor), name
    # BLIP's ViT norms (models/vit.py: partial(nn.LayerNorm, eps=1e-6)), not transformers' default 1e-5
    norms = [m for m in loaded.model.vision_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and {m.eps for m in norms} == {1e-6}
    assert loaded.model.config.vision_config.layer_norm_eps == 1e-6
    # the same weights compute the same captions' loss (up to the eps the ViT norms now use)
    images = [torch.rand(3, 32, 32) for _ in range(2)]
    from torchvision.transforms.functional import to_pil_image

    pairs = [(to_pil_image(im), caption) for im, caption in zip(images, ["a dog", "two cats on a mat"], strict=True)]
    torch.manual_seed(0)
    assert loaded.loss(loaded.collate(pairs)).item() == pytest.approx(source.loss(source.collate(pairs)).item(),
                                                                      rel=1e-3)


def test_position_embeddings_of_another_size_are_interpolated_as_blip_does(tmp_path):
    source = tiny(seed=1)
    positions = torch.randn(1, 1 + 2 * 2, 32)  # a 16 px checkpoint's 2 x 2 grid into the 32 px model's 4 x 4
    write_original(tmp_path / "small.pth", source, extra={"visual_encoder.pos_embed": positions})
    loaded = tiny(checkpoint=str(tmp_path / "small.pth"), init="pretrained")
    got = loaded.model.vision_model.embeddings.position_embedding
    assert got.shape == (1, 17, 32) and torch.equal(got[:, 0], positions[:, 0])
    grid = positions[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(got[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16, 32))


def test_a_file_that_is_not_a_blip_captioner_is_one_clear_message(tmp_path):
    source = tiny(seed=1)
    write_original(tmp_path / "pretrain.pth", source, drop=["text_decoder.cls.predictions.bias"])
    with pytest.raises(UserError, match=r"lacks 1 weight\(s\) of the BLIP captioner \(first: "
                                        r"text_decoder.cls.predictions.bias\)"):
        tiny(checkpoint=str(tmp_path / "pretrain.pth"), init="pretrained")
    torch.save(source.model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(UserError, match="has no .model. state dict"):
        tiny(checkpoint=str(tmp_path / "plain.pth"), init="pretrained")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read the BLIP checkpoint"):
        tiny(checkpoint=str(tmp_path / "broken.pth"), init="pretrained")


def test_the_id_papers_captioner_is_the_coco_finetuned_original_file(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=id_platon_coco", f"paths.root={tmp_path}"])
    # ID_VL_Pruning configs/caption_coco.yaml: pretrained .../model_base_caption_capfilt_large.pth
    assert cfg.model.checkpoint == f"{tmp_path}/weights/model_base_caption_capfilt_large.pth"
    with pytest.raises(UserError, match="model_base_caption_capfilt_large.pth does not exist; download "
                                        "model_base_caption_capfilt_large.pth .https://storage.googleapis.com/"
                                        "sfr-vision-language-research/BLIP/models/model_base_caption_capfilt_large.pth"):
        BlipCaptionAdapter.check_checkpoints(cfg.model)
    # BLIP's caption protocol (salesforce/BLIP configs/caption_coco.yaml, ID_VL_Pruning's too): prompt
    # 'a picture of ', num_beams 3, max_length 20, min_length 5 (both counting the prompt's tokens)
    assert cfg.model.prompt == "a picture of "
    caption = cfg.evals.coco_caption
    assert caption.prompt == "a picture of "
    assert dict(caption.generation) == {"num_beams": 3, "max_length": 20, "min_length": 5, "repetition_penalty": 1.0}


def test_wanda_ranks_blips_vit_per_whole_matrix_and_its_text_per_row():
    """UPop's BLIP pruner (ECoFLaP's BLIP rows): VITLayerWandaPruner sorts |W| ||X|| over the whole matrix;
    the BERT decoder is ranked per output row."""
    from torchvision.transforms.functional import to_pil_image

    from ecoflap_exp.pruning.engine import SequentialEngine
    from ecoflap_exp.pruning.wanda import WandaPruner

    adapter = tiny(seed=4)
    g = torch.Generator().manual_seed(0)
    pairs = [(to_pil_image(torch.rand(3, 32, 32, generator=g)), c) for c in ["a dog", "two cats", "a car", "a cup"]]
    batch = adapter.collate(pairs)
    vit, text = adapter.towers()[0].blocks[0], adapter.towers()[1].blocks[0]
    norms, handles = {}, []
    for m in [*vit.matrices, *text.matrices]:
        def hook(mod, args, out, m=m):
            x = m.input_of(args, {})
            x = x[batch["attention_mask"].bool()] if m.name.startswith("text_") and m.stream == "hidden" else x
            norms[m.name] = x.reshape(-1, x.shape[-1]).float().pow(2).sum(0)
        handles.append(m.input_module.register_forward_hook(hook))
    with torch.no_grad():
        adapter.forward(batch)
    for h in handles:
        h.remove()
    metrics = {m.name: m.weight.abs() * norms[m.name].sqrt() for m in [*vit.matrices, *text.matrices]}
    plan = {b.name: 0.5 if b.name in (vit.name, text.name) else 0.0 for b in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan).run([batch])
    assert {r.group for r in reports if r.block == vit.name} == {"matrix"}
    assert {r.group for r in reports if r.block == text.name} == {"row"}
    pruned = {m.name: m.weight == 0 for m in adapter.matrices()}
    for name, metric in metrics.items():
        expected = torch.zeros_like(metric, dtype=torch.bool)
        if name.startswith("vision_model."):
            expected.view(-1)[torch.sort(metric.flatten(), stable=True).indices[: round(metric.numel() * 0.5)]] = True
        else:
            expected.scatter_(1, torch.sort(metric, dim=1, stable=True).indices[:, : metric.shape[1] // 2], True)
        assert torch.equal(pruned[name], expected), name
