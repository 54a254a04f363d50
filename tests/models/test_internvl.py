"""InternVL3 (a tiny random model of the real class): images as variable numbers of tiles concatenated
along the ViT's batch, calibration in InternVL3's ChatML with the loss on the answers only (LLaVA's
instruction file, CC3M's webdataset shards), the block inputs the engine captures equal what the
model's forward hands every block, the engine equal to the full-forward reference in every tower, and
a run through run.py."""

import pytest
import torch

from ecoflap_exp.data.caption_pairs import ImageCaptionCalibration
from ecoflap_exp.data.conversations import ConversationCalibration
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.internvl import InternVLAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from tests.fixtures import write_llava_conversations
from tests.fixtures_text import write_webdataset
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import tower_sparsity
from tests.models.test_chat import SAMPLES, image, real_tokens_of, recorded_inputs, walked_as_the_model_hands_them
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

ALL_TOWERS = ["vision", "projector", "language"]
#: the tiny architecture's tile: 32 px, 8 px patches -> 4 x 4 patches, pixel-shuffled by 0.5 -> 2 x 2 tokens
TOKENS_PER_TILE = 4


def make(dtype="float32", **settings):
    settings = {"max_tiles": 4} | settings
    return InternVLAdapter(arch="internvl3_tiny", init="random", tokenizer="bytes", dtype=dtype, max_tokens=512,
                           prune_towers=ALL_TOWERS, **settings)


def batches_of(adapter):
    """Two padded batches, each of two conversations of different lengths and tile counts."""
    return [adapter.collate(SAMPLES[i : i + 2]) for i in (0, 2)]


def answer_runs(adapter, ids, labels):
    """The runs of consecutive target tokens, decoded, and the text before each run."""
    runs, before, current = [], [], []
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label != IGNORE:
            assert label == token
            if not current:
                before.append(adapter.tokenizer.decode(ids[:i]))
            current.append(token)
        elif current:
            runs.append(adapter.tokenizer.decode(current))
            current = []
    if current:
        runs.append(adapter.tokenizer.decode(current))
    return runs, before


def image_text(tiles):
    return "<img>" + "<IMG_CONTEXT>" * (TOKENS_PER_TILE * tiles) + "</img>"


def test_an_image_is_its_tiles_in_the_vision_batch_and_its_tokens_in_the_text():
    """InternVL's tiling: an image whose aspect is near 1 is one tile; a 1:2 one two tiles and a thumbnail;
    a 64 px square a 2 x 2 grid and a thumbnail. A batch's pixel rows are each sample's tiles in sample
    order, its counts kept; each sample's text holds exactly its tiles' tokens."""
    adapter = make()
    pictures = [image(0, (40, 48)), image(3, (32, 64)), image(4, (64, 64))]
    samples = [(picture, f"caption {i}") for i, picture in enumerate(pictures)]
    batch = adapter.collate(samples)
    assert batch["image_tiles"].tolist() == [1, 3, 5]
    alone = [adapter.processor.image_processor(picture, crop_to_patches=True, return_tensors="pt")["pixel_values"]
             for picture in pictures]
    assert torch.equal(batch["pixel_values"], torch.cat(alone))
    context = adapter.processor.image_token_id
    assert adapter.model.config.image_token_id == context
    for row, tiles in zip(batch["input_ids"].tolist(), [1, 3, 5], strict=True):
        text = adapter.tokenizer.decode(row)
        assert text.startswith("<|im_start|>user\n" + image_text(tiles) + "\nProvide a one-sentence caption")
        assert row.count(context) == TOKENS_PER_TILE * tiles
    towers = {t.name: t for t in adapter.towers()}
    vision = recorded_inputs(adapter, towers["vision"], batch)
    patches = 1 + 16  # CLS and 4 x 4 patches per tile
    assert all(inp.hidden.shape == (9, patches, 32) for inp in vision.values())
    # model.max_tiles bounds the grid: a 4 x 4-tile square gets 2 x 2 (+ thumbnail) at 4, 3 x 3 at InternVL3's 12
    big = [(image(5, (128, 128)), "a caption")]
    assert adapter.collate(big)["image_tiles"].tolist() == [5]
    assert make(max_tiles=None).collate(big)["image_tiles"].tolist() == [10]


def test_a_padded_batch_of_different_tile_counts_has_the_logits_of_its_samples():
    """Each sample's tiles reach its own image tokens: its logits in the padded batch are those it has alone."""
    adapter = make()
    batch = adapter.collate(SAMPLES)
    assert batch["image_tiles"].tolist() == [1, 3, 1, 3]
    with torch.no_grad():
        together = adapter.forward(batch)
        for i, sample in enumerate(SAMPLES):
            alone = adapter.forward(adapter.collate([sample]))[0]
            torch.testing.assert_close(together[i, : len(alone)], alone, rtol=1e-4, atol=1e-5)


def test_calibration_from_llava_conversations_and_cc3m_captions_trains_on_the_answers_only(tmp_path):
    """LLaVA's instruction file and CC3M's img2dataset shards, read as runs read them, rendered in
    InternVL3-hf's ChatML: the image first in the first user turn, each answer's tokens and its
    "<|im_end|>\\n" the only targets, each right after "<|im_start|>assistant\\n"."""
    adapter = make()
    path = write_llava_conversations(tmp_path / "llava")
    conversations = ConversationCalibration(str(path), num_samples=2, batch_size=2, shuffle=False).batches(adapter)
    batch = conversations[0]
    tiles = batch["image_tiles"].tolist()
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    real = batch["attention_mask"][0].bool()
    assert adapter.tokenizer.decode(batch["input_ids"][0][real]) == (
        "<|im_start|>user\n" + image_text(tiles[0]) + "\nWhat are the colors of the bus in the image?<|im_end|>\n"
        "<|im_start|>assistant\nThe bus in the image is white and red.<|im_end|>\n"
        "<|im_start|>user\nWhat feature can be seen on the back of the bus?<|im_end|>\n"
        "<|im_start|>assistant\nThe back of the bus features an advertisement.<|im_end|>\n")
    runs, before = answer_runs(adapter, ids, labels)
    assert runs == ["The bus in the image is white and red.<|im_end|>\n",
                    "The back of the bus features an advertisement.<|im_end|>\n"]
    assert all(text.endswith("<|im_start|>assistant\n") for text in before)
    runs, before = answer_runs(adapter, batch["input_ids"][1].tolist(), batch["labels"][1].tolist())
    assert runs == ["Yes<|im_end|>\n"]  # the text-only entry is skipped, the GQA one is the second sample
    assert before == ["<|im_start|>user\n" + image_text(tiles[1]) + "\nIs the sky dark?\nAnswer the question using "
                      "a single word or phrase.<|im_end|>\n<|im_start|>assistant\n"]
    shards = tmp_path / "cc3m"
    write_webdataset(shards, [["a dog on a beach", "a red bus"]])
    captions = ImageCaptionCalibration(str(shards), num_samples=2, batch_size=2).batches(adapter)[0]
    for row, caption in enumerate(["a dog on a beach", "a red bus"]):
        ids, labels = captions["input_ids"][row].tolist(), captions["labels"][row].tolist()
        runs, before = answer_runs(adapter, ids, labels)
        assert runs == [caption + "<|im_end|>\n"]
        assert before == ["<|im_start|>user\n" + image_text(captions["image_tiles"][row].item())
                          + "\nProvide a one-sentence caption for the provided image.<|im_end|>\n"
                          "<|im_start|>assistant\n"]


def test_captured_block_inputs_are_what_the_model_hands_its_blocks():
    """Every tower, every block, both batches: hidden states and every other argument (the language
    blocks' causal-padding masks and rotary tables) as the model's own forward hands them."""
    adapter = make()
    for tower, _, _, inp in walked_as_the_model_hands_them(adapter, batches_of(adapter)):
        if tower.name == "language":
            assert set(inp.kwargs) >= {"attention_mask", "position_embeddings"}


@pytest.mark.parametrize(("dtype", "norm"), [("float32", "layer_norm"), ("bfloat16", "layer_norm"),
                                              ("float32", "rms_norm")])
def test_sequential_engine_equals_full_forward_reference(dtype, norm):
    """Vision (InternViT with layer scale; LayerNorm as InternViT-300M, RMSNorm as InternViT-6B), then the
    projector, then the language model fed the pruned towers' image features; Wanda at per-block sparsities."""
    overrides = {"vision_config": {"norm_type": norm}}
    fast, slow = make(dtype, arch_overrides=overrides), make(dtype, arch_overrides=overrides)
    assert type(fast.model.model.vision_tower.encoder.layer[0].layernorm_before).__name__ == (
        "LayerNorm" if norm == "layer_norm" else "InternVLVisionRMSNorm")
    assert [t.name for t in fast.towers()] == ALL_TOWERS
    plan = {b.name: s for b, s in zip(fast.blocks(), [0.3, 0.6, 0.5, 0.4, 0.7], strict=True)}
    pruner = WandaPruner()
    SequentialEngine(fast, pruner, plan).run(batches_of(fast))
    prune_by_full_forwards(slow, pruner, plan, batches_of(slow), tokens=real_tokens_of(slow))
    assert_same_pruning(fast, slow)
    assert any((m.weight == 0).any() for m in fast.matrices())


@pytest.mark.slow
def test_zeroth_order_run_reaches_exactly_the_target(tmp_path):
    """run.py with ECoFLaP's zeroth-order block scores: a non-uniform plan over vision and language
    (the projector dense by default) that reaches exactly half of their weights."""
    record = run(config(tmp_path, "model=internvl3_tiny", "suite=none", "calib=digits", "scorer=zeroth",
                        "sparsity=0.5", "scorer.num_samples=8", "calib.num_samples=8", "calib.batch_size=4"))
    assert record.achieved.overall == 0.5
    per_tower = tower_sparsity(record)
    assert set(per_tower) == {"vision", "language"}
    for tower, (planned, achieved) in per_tower.items():
        assert achieved == pytest.approx(planned, abs=2e-3), tower
    assert len(set(record.plan.values())) > 1
