"""What the intrinsic dimension rests on: distinct points per estimate, a warning when a tower's IDs
rest on fewer than half the samples (a caption file ordered image by image, read in its eval view),
the ID experiments sampling as ID_VL_Pruning does, and pad positions as its hooks keep them."""

import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.scoring.id_estimators import VectorStore
from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer
from tests.integration.test_run import ROOT

WORDS = ["dog", "cat", "car", "tree", "boat", "lamp", "road", "hill", "cup", "bird", "fish", "door", "bike", "rock"]


def pairs(images: int, captions_each: int):
    """`images` random images, each with `captions_each` different captions, listed image by image
    (as Karpathy's and UPop's caption files are)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(images):
        image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        out += [(image, f"a {WORDS[j]} {'and ' * (i % 3)}number {i}") for j in range(captions_each)]
    return out


def test_a_towers_id_on_repeated_images_is_counted_and_warned_about(caplog):
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    repeated = pairs(8, 4)  # 32 samples, 8 distinct images
    scorer = IntrinsicDimensionScorer()
    with caplog.at_level(logging.WARNING):
        scorer.scores(adapter, [adapter.collate(repeated[i : i + 8]) for i in range(0, 32, 8)])
    points = scorer.info["id_points"]
    assert scorer.info["id_samples"] == 32
    assert {p for name, p in points.items() if name.startswith("visual.")} == {8}  # one point per image
    assert {p for name, p in points.items() if name.startswith("transformer.")} == {32}  # every caption differs
    assert [r for r in caplog.records if "tower vision rest on as few as 8 distinct points of 32" in r.getMessage()]
    assert not [r for r in caplog.records if "tower text" in r.getMessage()]
    caplog.clear()
    distinct = pairs(32, 1)
    with caplog.at_level(logging.WARNING):
        scorer.scores(adapter, [adapter.collate(distinct[i : i + 8]) for i in range(0, 32, 8)])
    assert set(scorer.info["id_points"].values()) == {32} and not caplog.records


@pytest.mark.parametrize("experiment", ["id_platon_coco", "id_platon_flickr_clip", "ecoflap_finetune_blip"])
def test_the_id_experiments_draw_captions_at_random_in_the_training_view(experiment):
    """ID_VL_Pruning (ComputeID.py / OnlineComputeID.py) and ECoFLaP's UPop captioner script draw random
    COCO/Flickr training captions through transform_train; its hooks keep pad positions (pads=computed)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"])
    assert cfg.calib.shuffle and cfg.calib.augment == "train"
    if experiment != "ecoflap_finetune_blip":
        assert cfg.finetune.id.pads == "computed"


def test_computed_pads_keep_the_layers_outputs_at_pad_positions(monkeypatch):
    """pads=computed: a text layer's stored vectors hold its outputs at the batch's pad positions (the
    reference's hooks); pads=zero: zeros there. (BLIP's captioner, its captions padded to the longest.)"""
    from ecoflap_exp.models.blip import BlipCaptionAdapter

    adapter = BlipCaptionAdapter(arch="blip_caption_tiny", init="random", tokenizer="bytes", prune_towers=["text"])
    batch = adapter.collate(pairs(8, 1))
    real = batch["attention_mask"].bool()
    assert not real.all()
    stored = []
    original = VectorStore.add
    monkeypatch.setattr(VectorStore, "add", lambda self, v: stored.append(v.clone()) or original(self, v))
    query = "text_decoder.bert.encoder.layer.0.attention.self.query"
    outputs = []
    module = adapter.model.get_submodule(query)
    handle = module.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    with torch.no_grad():
        adapter.forward(batch)
    handle.remove()
    for pads in ("zero", "computed"):
        stored.clear()
        IntrinsicDimensionScorer(granularity="matrix", pads=pads).scores(adapter, [batch] * 4)
        first = stored[0]  # the block's first matrix (the self-attention query) on the first batch
        torch.testing.assert_close(first[real], outputs[0][real])
        if pads == "zero":
            assert (first[~real] == 0).all()
        else:
            torch.testing.assert_close(first[~real], outputs[0][~real])
            assert (first[~real] != 0).any()
