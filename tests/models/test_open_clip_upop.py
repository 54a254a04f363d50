"""The ID paper's CLIP Flickr30k pipeline (Nofear18/ID_VL_Pruning on sdc17/UPop): UPop's checkpoint
layout, its square image view and its caption cleaning, each against a transcription of the
reference (UPop's clip/model.py and data/__init__.py, BLIP's data/utils.py pre_caption)."""

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torchvision import transforms

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from tests.integration.test_run import ROOT

#: OpenAI CLIP's parameter names (UPop's clip/model.py CLIP, VisionTransformer, Transformer), per resblock N
OPENAI_NAMES = ["visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
                "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
                "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale",
                "ln_final.weight", "ln_final.bias"]
BLOCK_NAMES = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight",
               "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight",
               "ln_2.bias"]


def openai_names(layers: int) -> list[str]:
    names = list(OPENAI_NAMES)
    for tower in ("visual.transformer", "transformer"):
        names += [f"{tower}.resblocks.{n}.{part}" for n in range(layers) for part in BLOCK_NAMES]
    return names


def write_upop(path, source, drop=()):
    """UPop's save: {'model': CLIP state dict} with its momentum encoders and queues (clip/model.py)."""
    state = {name: source.model.state_dict()[name].clone() for name in openai_names(2)}
    momentum = {k.replace("visual.", "visual_m.", 1).replace("transformer.", "transformer_m.", 1): v.clone() + 1
                for k, v in state.items() if k.startswith(("visual.", "transformer."))}
    momentum |= {"token_embedding_m.weight": state["token_embedding.weight"] + 1, "ln_final_m.weight": state[
        "ln_final.weight"] + 1, "text_projection_m": state["text_projection"] + 1}
    queues = {"image_queue": torch.randn(16, 8), "text_queue": torch.randn(16, 8),
              "idx_queue": torch.full((1, 8), -100), "ptr_queue": torch.zeros(1, dtype=torch.long)}
    for key in drop:
        del state[key]
    torch.save({"model": state | momentum | queues}, path)
    return state


def test_upops_checkpoint_loads_into_the_open_clip_architecture(tmp_path):
    source = OpenCLIPAdapter("clip_tiny", init="random", seed=1)
    assert set(openai_names(2)) == set(source.model.state_dict())  # open_clip's CLIP keeps OpenAI's names
    state = write_upop(tmp_path / "clip_large_retrieval_flickr.pth", source)
    loaded = OpenCLIPAdapter("clip_tiny", checkpoint=str(tmp_path / "clip_large_retrieval_flickr.pth"), seed=2)
    own = loaded.model.state_dict()
    assert all(torch.equal(own[name], tensor) for name, tensor in state.items())  # the model, not its momentum copy


def test_a_checkpoint_of_another_layout_is_one_clear_message(tmp_path):
    source = OpenCLIPAdapter("clip_tiny", init="random", seed=1)
    write_upop(tmp_path / "short.pth", source, drop=["visual.proj"])
    with pytest.raises(UserError, match=r"lacks 1 weight\(s\) of CLIP \(first: visual.proj\)"):
        OpenCLIPAdapter("clip_tiny", checkpoint=str(tmp_path / "short.pth"))
    torch.save(source.model.state_dict(), tmp_path / "open_clip.pt")
    with pytest.raises(UserError, match="no 'model' state dict .* an open_clip checkpoint goes to model.pretrained"):
        OpenCLIPAdapter("clip_tiny", checkpoint=str(tmp_path / "open_clip.pt"))
    wide = OpenCLIPAdapter("digits_clip", init="random")
    torch.save({"model": wide.model.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="has shape .* is it a CLIP of model.model_name's architecture"):
        OpenCLIPAdapter("clip_tiny", checkpoint=str(tmp_path / "other.pth"))


def test_square_view_is_upops_transform_test():
    """data/__init__.py transform_test: Resize((image_size, image_size), BICUBIC), ToTensor, OpenAI's normalisation."""
    adapter = OpenCLIPAdapter("clip_tiny", init="random", resize="square")
    reference = transforms.Compose([
        transforms.Resize((32, 32), interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (40, 90, 3), generator=g, dtype=torch.uint8).numpy())
    torch.testing.assert_close(adapter.preprocess(image), reference(image))
    cropped = OpenCLIPAdapter("clip_tiny", init="random").preprocess(image)
    assert not torch.allclose(cropped, reference(image))  # open_clip's view crops the sides off


def pre_caption(caption, max_words=50):
    """BLIP's (and UPop's) data/utils.py pre_caption, as released."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n")
    caption = caption.strip(" ")
    caption_words = caption.split(" ")
    if len(caption_words) > max_words:
        caption = " ".join(caption_words[:max_words])
    return caption


def test_captions_are_cleaned_to_30_words_in_training_and_evaluation():
    adapter = OpenCLIPAdapter("clip_tiny", init="random", caption_words=30)
    raw = 'A "Man" (in red) rides a bike; fast!! ' + " ".join(f"w{i}" for i in range(40)) + "."
    cleaned = pre_caption(raw, 30)
    assert cleaned.startswith("a man in red rides a bike fast w0 w1") and len(cleaned.split(" ")) == 30
    image = Image.new("RGB", (40, 40), (10, 200, 30))
    assert torch.equal(adapter.collate([(image, raw)])["text"], adapter.tokenizer([cleaned]))
    torch.testing.assert_close(adapter.text_features([raw]), adapter.text_features([cleaned]))
    plain = OpenCLIPAdapter("clip_tiny", init="random")
    assert torch.equal(plain.collate([(image, raw)])["text"], plain.tokenizer([raw]))


def test_the_id_papers_clip_starts_from_upops_flickr30k_model(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=id_platon_flickr_clip", f"paths.root={tmp_path}"])
    model = cfg.model
    # ID_VL_Pruning configs/retrieval_flickr_clip.yaml: pretrained ./clip_large_retrieval_flickr.pth, image_size 336;
    # flickr30k datasets: pre_caption(caption, 30)
    assert model.checkpoint == f"{tmp_path}/weights/clip_large_retrieval_flickr.pth"
    assert (model.model_name, model.resize, model.caption_words) == ("ViT-L-14-336-quickgelu", "square", 30)
    with pytest.raises(UserError, match="clip_large_retrieval_flickr.pth does not exist; download "
                                        "clip_large_retrieval_flickr.pth .https://drive.google.com/"):
        OpenCLIPAdapter.check_checkpoints(model)
