"""Qwen2.5-VL (a tiny random model of the real class): the ViT's windowed and full-attention blocks each get
their own sequence boundaries (hand-worked) and the window order of the patches; a windowed block handed the
full boundaries computes something else; the walk hands every block what the model's own forward hands it;
the engine equals the slow full-forward reference (fp32, bf16, padded batches, every tower); calibration in
the ChatML template with the loss on the answers only, from LLaVA's instruction file and CC3M pairs; a run
reaches exactly its sparsity; the shipped 7B architecture is the released one."""

import pytest
import torch
from PIL import Image

from ecoflap_exp.data.caption_pairs import read_pairs
from ecoflap_exp.data.conversations import read_conversations
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.qwen2_5_vl import Qwen2_5_VLAdapter
from ecoflap_exp.models.seam import BlockInput
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from ecoflap_exp.walk import capture_arguments
from tests.fixtures import write_caption_pairs, write_llava_conversations
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import tower_sparsity
from tests.models.test_chat import (
    SAMPLES,
    answers_of,
    real_tokens_of,
    recorded_inputs,
    walked_as_the_model_hands_them,
)
from tests.models.test_loading import built, kind, llama_facts, norm
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

ALL_TOWERS = ["vision", "projector", "language"]


def make(dtype="float32", towers=ALL_TOWERS):
    # the tiny config's pixel bounds: every image at least 48 x 48 px, so several 32 px windows
    return Qwen2_5_VLAdapter(arch="qwen25vl_tiny", init="random", tokenizer="bytes", dtype=dtype, max_tokens=512,
                             prune_towers=list(towers), min_pixels=2304, max_pixels=4096)


def batches_of(adapter):
    return [adapter.collate(SAMPLES[i : i + 2]) for i in (0, 2)]


def vision_of(adapter):
    return next(t for t in adapter.towers() if t.name == "vision")


def test_the_tiny_vit_has_windowed_and_full_attention_blocks_and_several_windows_per_image():
    vision = make().model.config.vision_config
    assert vision.depth == 2 and list(vision.fullatt_block_indexes) == [1]  # block 0 windowed, block 1 full
    # transformers' get_vision_window_index: windows of window_size // merge // patch merged tokens a side
    assert vision.window_size // vision.spatial_merge_size // vision.patch_size == 2


def test_windowed_and_full_attention_blocks_get_their_own_boundaries_and_the_window_order():
    """Hand-worked for two images of 6 x 8 and 8 x 6 patches (3 x 4 and 4 x 3 merged 2 x 2 units of 4 patches):
    windows of 2 x 2 units, row by row, the last row and column of windows cut short. Image 1: windows of
    4, 4, 2, 2 units (16, 16, 8, 8 patches); image 2: 4, 2, 4, 2 units (16, 8, 16, 8). The windowed block's
    boundaries are the windows', the full-attention block's the images'; the patches enter in window order."""
    adapter = make()
    batch = adapter.collate(SAMPLES[:2])
    assert batch["image_grid_thw"].tolist() == [[1, 6, 8], [1, 8, 6]]
    with torch.no_grad():
        [(windowed, full)] = capture_arguments(adapter, vision_of(adapter), [batch])
        embedded = adapter.model.model.visual.patch_embed(batch["pixel_values"])
    assert windowed.kwargs["cu_seqlens"].tolist() == [0, 16, 32, 40, 48, 64, 72, 88, 96]
    assert full.kwargs["cu_seqlens"].tolist() == [0, 48, 96]
    # units row-major per image (the image processor's order); each window's units in row-major order
    units = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11] + [12 + u for u in (0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11)]
    torch.testing.assert_close(windowed.hidden, embedded[[4 * u + k for u in units for k in range(4)]])


def test_a_block_handed_the_other_kind_of_boundaries_computes_something_else():
    """Block 0 with its own (window) boundaries gives what the model hands block 1; with block 1's (full)
    boundaries it does not, nor does block 1 with the windows': a walk that handed every block block 0's
    arguments would be caught."""
    adapter = make()
    vision = vision_of(adapter)
    recorded = recorded_inputs(adapter, vision, adapter.collate(SAMPLES[:2]))
    windowed, full = (recorded[b.name] for b in vision.blocks)
    assert not torch.equal(windowed.kwargs["cu_seqlens"], full.kwargs["cu_seqlens"])

    def with_boundaries_of(inp, other):
        return BlockInput(inp.hidden, inp.args, {**inp.kwargs, "cu_seqlens": other.kwargs["cu_seqlens"],
                                                 "max_seqlen": other.kwargs["max_seqlen"]})

    with torch.no_grad():
        first = vision.run_block(vision.blocks[0], windowed)
        torch.testing.assert_close(first, full.hidden)
        assert (vision.run_block(vision.blocks[0], with_boundaries_of(windowed, full)) - first).abs().max() > 1e-3
        second = vision.run_block(vision.blocks[1], full)
        assert (vision.run_block(vision.blocks[1], with_boundaries_of(full, windowed)) - second).abs().max() > 1e-3


def test_the_walk_hands_every_block_what_the_models_forward_hands_it():
    adapter = make()
    batches = batches_of(adapter)
    for tower, _, b, inp in walked_as_the_model_hands_them(adapter, batches):
        if tower.name != "language":
            assert inp.sizes == tuple(batches[b]["image_grid_thw"].prod(-1).tolist())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sequential_engine_equals_full_forward_reference(dtype):
    """Vision (windowed, then full attention), the merger, then the language model fed the pruned towers'
    image features; batches of two conversations of different lengths (padded)."""
    fast, slow = make(dtype), make(dtype)
    assert {t.name for t in fast.towers()} == set(ALL_TOWERS)
    assert all(b["attention_mask"].sum(1).unique().numel() == 2 for b in batches_of(fast))
    plan = {b.name: 0.5 for b in fast.blocks()}
    SequentialEngine(fast, WandaPruner(), plan).run(batches_of(fast))
    prune_by_full_forwards(slow, WandaPruner(), plan, batches_of(slow), tokens=real_tokens_of(slow))
    assert_same_pruning(fast, slow)
    assert all((m.weight == 0).float().mean().item() == 0.5 for m in fast.matrices())


def prompts_of(adapter, batch):
    """The real tokens that carry no target, the image's tokens left out, decoded per sample."""
    image_id = adapter.processor.image_token_id
    return [adapter.tokenizer.decode([t for t, label, real in zip(*rows, strict=True)
                                      if label == IGNORE and real and t != image_id])
            for rows in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                            batch["attention_mask"].tolist(), strict=True)]


def test_llava_conversations_and_cc3m_pairs_in_chatml_with_the_loss_on_the_answers(tmp_path):
    """Qwen2.5-VL-Instruct's template (Qwen2-VL's ChatML): the default system turn, the image first in the
    first user turn; the targets are each answer and its <|im_end|>\\n, nothing else."""
    conversations = read_conversations(str(write_llava_conversations(tmp_path / "llava")))
    pairs = read_pairs(str(write_caption_pairs(tmp_path / "cc3m")["tsv"]))
    (path, turns), (pair_path, caption) = conversations[0], pairs[0]
    adapter = make()
    batch = adapter.collate([(Image.open(path), turns), (Image.open(pair_path), caption)])
    assert answers_of(adapter, batch) == [
        "The bus in the image is white and red.<|im_end|>\nThe back of the bus features an advertisement.<|im_end|>\n",
        f"{caption}<|im_end|>\n"]
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert prompts_of(adapter, batch) == [
        f"{system}<|im_start|>user\n<|vision_start|><|vision_end|>What are the colors of the bus in the image?"
        "<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nWhat feature can be seen on the back of the bus?"
        "<|im_end|>\n<|im_start|>assistant\n",
        f"{system}<|im_start|>user\n<|vision_start|><|vision_end|>Provide a one-sentence caption for the provided "
        "image.<|im_end|>\n<|im_start|>assistant\n"]
    # one image token per 2 x 2 merged patches, as the ViT's merger gives them
    merged = (batch["image_grid_thw"].prod(-1) // 4).tolist()
    assert (batch["input_ids"] == adapter.processor.image_token_id).sum(1).tolist() == merged
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


@pytest.mark.slow
def test_run_with_zeroth_order_scores_reaches_exactly_the_target(tmp_path):
    """Every matrix loses exactly round(rows x cols x its planned sparsity) weights (count=exact), its
    share of the target's count, so the whole model is exactly 0.5."""
    record = run(config(tmp_path, "model=qwen25vl_tiny", "suite=none", "calib=digits", "scorer=zeroth",
                        "scorer.num_samples=16", "sparsity=0.5", "calib.num_samples=16", "calib.batch_size=8"))
    assert set(tower_sparsity(record)) == {"vision", "language"}
    assert len(set(record.plan.values())) > 1  # the scores, not a uniform plan
    for m in record.matrices:
        zeros = round(record.achieved.per_matrix[m.name] * m.rows * m.cols)
        assert zeros == m.pruned == round(m.rows * m.cols * m.planned_sparsity), m.name
    total = sum(m.rows * m.cols for m in record.matrices)
    assert total == record.achieved.prunable_params
    assert record.achieved.overall == 0.5


def test_qwen2_5_vl_7b_is_built_as_released():
    """Qwen/Qwen2.5-VL-7B-Instruct config.json: ViT depth 32, hidden 1280, 16 heads, SwiGLU MLP of 3420 (silu),
    RMSNorm eps 1e-6, patch 14, merge 2, temporal patch 2, 112 px windows, full attention in blocks 7, 15, 23,
    31, merger out 3584; Qwen2.5-7B: 28 layers of 3584, 28 heads and 4 KV heads, intermediate 18944, vocab
    152064, RMSNorm eps 1e-6, 128000 positions, M-RoPE sections [16, 24, 24], theta 1e6, q/k/v biases and no o
    bias."""
    model = built("qwen2_5_vl_7b", "model.tokenizer=bytes").model
    visual = model.model.visual
    block = visual.blocks[0]
    assert {"depth": len(visual.blocks), "hidden": block.attn.qkv.in_features, "heads": block.attn.num_heads,
            "mlp": block.mlp.gate_proj.out_features, "act": kind(block.mlp.act_fn), "norm": norm(block.norm1),
            "patch": visual.patch_embed.patch_size, "merge": visual.spatial_merge_size,
            "temporal": visual.patch_embed.temporal_patch_size, "window": visual.window_size,
            "full": list(visual.fullatt_block_indexes), "out": visual.merger.mlp[-1].out_features} == {
        "depth": 32, "hidden": 1280, "heads": 16, "mlp": 3420, "act": "SiLUActivation", "norm": ("RMSNorm", 1e-6),
        "patch": 14, "merge": 2, "temporal": 2, "window": 112, "full": [7, 15, 23, 31], "out": 3584}
    text = model.model.language_model
    assert {**llama_facts(text), "o_bias": text.layers[0].self_attn.o_proj.bias is not None,
            "mrope": text.config.rope_parameters["mrope_section"]} == {
        "layers": 28, "hidden": 3584, "mlp": 18944, "heads": 28, "kv_heads": 4, "vocab": 152064,
        "act": "SiLUActivation", "norm": ("RMSNorm", 1e-6), "rope_theta": 1e6, "positions": 128000,
        "qkv_bias": True, "o_bias": False, "mrope": [16, 24, 24]}
