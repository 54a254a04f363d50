"""LLaVA-OneVision (a tiny random model of the real class): anyres crops batched as its image processor
batches them, its vision layers and image_newline, the block inputs its own forward hands every block,
the engine against the full-forward reference, calibration in the authors' Qwen ChatML template with
the loss on the answers only, a run that reaches exactly its target."""

import pytest
import torch
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.llava_onevision import LlavaOnevisionAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs, write_llava_conversations
from tests.integration.test_run import config
from tests.models.test_chat import (
    ALL_TOWERS,
    SAMPLES,
    SHORT_ANSWER,
    answers_of,
    image,
    pruned_and_reloaded,
    real_tokens_of,
    recorded_inputs,
    walked_as_the_model_hands_them,
)
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

#: LLaVA-NeXT's conv_qwen (llava/conversation.py): its system message, CHATML separators
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
#: SAMPLES[0] is 40 high and 48 wide, SAMPLES[3] 32 high and 64 wide: of the tiny pinpoints (32-px crops) the first
#: is best resized into 64x64 (scale 4/3 keeps all its 1,920 pixels; 64x32 or 32x64 would shrink it), a 2x2 grid,
#: the other fits 32x64 exactly, a 1x2 grid; each image's crops plus the whole image resized
CROPS = [5, 3]


def make(dtype="float32", towers=ALL_TOWERS, **settings):
    return LlavaOnevisionAdapter(arch="onevision_tiny", init="random", tokenizer="bytes", dtype=dtype,
                                 max_tokens=512, prune_towers=list(towers), **settings)


def batches_of(adapter):
    """Two batches of two; the second pairs images of different crop counts (5 and 3)."""
    return [adapter.collate(SAMPLES[0:2]), adapter.collate(SAMPLES[2:4])]


def qwen_prompt(turns):
    """conv_qwen.get_prompt (SeparatorStyle.CHATML): role + "\\n" + message + "<|im_end|>\\n" per turn, role +
    "\\n" for the turn to generate (None); the image as "<image>\\n" before the first question."""
    text = SYSTEM
    for role, message in turns:
        text += f"<|im_start|>{role}\n" + (f"{message}<|im_end|>\n" if message is not None else "")
    return text


def test_images_of_different_crop_counts_are_padded_as_the_image_processor_pads_a_batch():
    """A batch pads the crop axis with zero crops (the processor's own batch of both images holds the
    same pixels); the vision tower sees each image's real crops only; each sample's logits are the
    ones it has alone; each image gets the hand-counted tokens."""
    adapter = make()
    samples = [SAMPLES[0], SAMPLES[3]]
    batch = adapter.collate(samples)
    pixels = batch["pixel_values"]
    assert pixels.shape == (2, max(CROPS), 3, 32, 32)
    alone = [adapter.collate([s]) for s in samples]
    assert [b["pixel_values"].shape[1] for b in alone] == CROPS
    processed = adapter.processor.image_processor([image(0), image(3, (32, 64))], return_tensors="pt")
    torch.testing.assert_close(pixels, processed["pixel_values"], rtol=0, atol=0)
    assert (pixels[1, CROPS[1]:] == 0).all() and (pixels[1, : CROPS[1]] != 0).any()
    # 40x48 in a 2x2 grid of 4x4 features: 8x8, the height's padding cut to int(40 * 8 / 48) = 6 rows,
    # 6 x (8 + a newline) + 16 for the whole image; 32x64 in a 1x2 grid: 4 rows of 8 + newline, + 16
    image_id = adapter.processor.image_token_id
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [6 * 9 + 16, 4 * 9 + 16]
    vision = next(t for t in adapter.towers() if t.name == "vision")
    seen = recorded_inputs(adapter, vision, batch)
    assert seen[vision.blocks[0].name].hidden.shape == (sum(CROPS), 16, 32)
    with torch.no_grad():
        logits = adapter.forward(batch)
        for row, single in enumerate(alone):
            length = single["input_ids"].shape[1]
            torch.testing.assert_close(logits[row, :length], adapter.forward(single)[0], rtol=1e-4, atol=1e-5)


def test_every_siglip_layer_feeds_the_features_and_image_newline_is_used_but_never_pruned():
    """The -ov checkpoints read hidden state -1, the last layer's output before SigLIP's post-layernorm:
    every layer is a block and the last one changes the logits, the post-layernorm does not. With a
    shallower feature layer the layers after it change nothing and are not blocks. image_newline
    changes the logits, is no block's matrix, and stays as it was through pruning."""
    adapter = make()
    vision_model = adapter.model.model.vision_tower
    layers = vision_model.encoder.layers
    towers = {t.name: t for t in adapter.towers()}
    assert [b.module for b in towers["vision"].blocks] == list(layers)
    batch = adapter.collate(SAMPLES[:2])
    newline = adapter.model.model.image_newline
    with torch.no_grad():
        before = adapter.forward(batch)
        for p in vision_model.post_layernorm.parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(adapter.forward(batch), before, rtol=0, atol=0)
        kept = newline.detach().clone()
        newline.add_(1.0)
        assert not torch.allclose(adapter.forward(batch), before)
        newline.copy_(kept)
        for p in layers[-1].parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(adapter.forward(batch), before)
    assert all(m.param is not newline for m in adapter.matrices())
    SequentialEngine(adapter, WandaPruner(), {b.name: 0.5 for b in adapter.blocks()}).run(batches_of(adapter))
    assert torch.equal(newline, kept) and (newline != 0).all()

    shallow = make(arch_overrides={"vision_feature_layer": -2})
    layers = shallow.model.model.vision_tower.encoder.layers
    assert [b.module for b in shallow.towers()[0].blocks] == list(layers[:-1])
    batch = shallow.collate(SAMPLES[:2])
    with torch.no_grad():
        before = shallow.forward(batch)
        for p in layers[-1].parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(shallow.forward(batch), before, rtol=0, atol=0)


def test_captured_block_inputs_are_what_the_model_hands_its_blocks():
    """Every block of every tower, over a batch whose images differ in crop count: hidden states and
    every argument (attention masks, rotary tables) as the model's own forward hands them."""
    adapter = make()
    batches = batches_of(adapter)
    for tower, _, b, inp in walked_as_the_model_hands_them(adapter, batches):
        if tower.name == "language":
            assert inp.kwargs["position_embeddings"][0].shape[1] == batches[b]["input_ids"].shape[1]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sequential_engine_equals_full_forward_reference(dtype):
    """Vision, then projector, then the language model fed the pruned towers' image features; padded
    batches (tokens and crops)."""
    fast, slow = make(dtype), make(dtype)
    plan = {b.name: s for b, s in zip(fast.blocks(), [0.3, 0.6, 0.5, 0.4, 0.7], strict=True)}
    SequentialEngine(fast, WandaPruner(), plan).run(batches_of(fast))
    prune_by_full_forwards(slow, WandaPruner(), plan, batches_of(slow), tokens=real_tokens_of(slow))
    assert_same_pruning(fast, slow)


def test_calibration_renders_llava_conversations_and_cc3m_captions_in_the_qwen_template(tmp_path):
    """A conversation of LLaVA's instruction file and a CC3M caption pair as the authors' conv_qwen
    renders them; only each answer and its <|im_end|>\\n carry a target."""
    from ecoflap_exp.data.caption_pairs import read_pairs
    from ecoflap_exp.data.conversations import read_conversations

    adapter = make()
    (path, turns), *_ = read_conversations(str(write_llava_conversations(tmp_path / "llava")))
    (picture, caption), *_ = read_pairs(str(write_caption_pairs(tmp_path / "cc3m")["tsv"]))
    samples = [(Image.open(path), turns), (Image.open(picture), caption)]
    texts = []
    original = type(adapter.processor).__call__
    adapter.processor.__class__ = type("Spied", (type(adapter.processor),),
                                       {"__call__": lambda self, *a, **k: texts.extend(k["text"]) or original(
                                           self, *a, **k)})
    batch = adapter.collate(samples)
    assert turns[0] == ("human", "What are the colors of the bus in the image?\n<image>")
    assert texts == [
        qwen_prompt([("user", "<image>\nWhat are the colors of the bus in the image?"),
                     ("assistant", "The bus in the image is white and red."),
                     ("user", "What feature can be seen on the back of the bus?"),
                     ("assistant", "The back of the bus features an advertisement.")]),
        qwen_prompt([("user", "<image>\nProvide a one-sentence caption for the provided image."),
                     ("assistant", caption)])]
    assert answers_of(adapter, batch) == [
        "The bus in the image is white and red.<|im_end|>\nThe back of the bus features an advertisement.<|im_end|>\n",
        f"{caption}<|im_end|>\n"]
    image_id = adapter.processor.image_token_id
    for ids, labels, real in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                 batch["attention_mask"].tolist(), strict=True):
        targets = [i for i, label in enumerate(labels) if label != IGNORE]
        assert all(labels[i] == ids[i] and real[i] and ids[i] != image_id for i in targets)
        # the targets are one run per answer: each starts right after "<|im_start|>assistant\n"
        header = adapter.tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
        starts = [i for i in targets if i - 1 not in targets]
        assert all(ids[i - len(header) : i] == header for i in starts)


def test_generation_prompts_in_the_qwen_template_and_the_checkpoint_template_is_refused_for_calibration():
    """lmms-eval's llava_onevision prompt (conv qwen_1_5: "<image>\\n" + question, then the assistant
    header); llava-hf's -ov template renders a past answer after "assistant " but prompts with
    "assistant\\n", so its answers cannot be located."""
    adapter = make()
    question = SHORT_ANSWER.format("What is on the table?")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    assert adapter.render(messages, generation_prompt=True) == qwen_prompt([("user", "<image>\n" + question),
                                                                            ("assistant", None)])
    answers = adapter.generate([image(0), image(3, (32, 64))], [question, "Why?"], max_new_tokens=3, num_beams=1)
    assert len(answers) == 2
    hf = make(conversation="checkpoint")
    assert hf.render(messages, generation_prompt=True) == (f"<|im_start|>user <image>\n{question}<|im_end|>"
                                                           "<|im_start|>assistant\n")
    with pytest.raises(UserError, match="does not render a conversation as a prefix"):
        hf.collate(SAMPLES[:1])


def test_a_pruned_model_saves_in_transformers_format_with_its_processor(tmp_path):
    adapter = make()
    reloaded = pruned_and_reloaded(adapter, batches_of(adapter), tmp_path / "saved")
    batch = adapter.collate(SAMPLES[2:4])
    assert torch.equal(reloaded.collate(SAMPLES[2:4])["pixel_values"], batch["pixel_values"])
    assert torch.equal(reloaded.collate(SAMPLES[2:4])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward(batch), adapter.forward(batch))
    for m in adapter.matrices():
        assert torch.equal(reloaded.model.get_parameter(m.name + ".weight") == 0, m.weight == 0), m.name


@pytest.mark.slow
def test_run_with_zeroth_order_scores_reaches_exactly_the_target(tmp_path):
    """run.py with ECoFLaP's zeroth-order block scores: a non-uniform plan over vision and language (the
    projector dense by default); every matrix prunes exactly its planned count, round(rows x cols x p), so the
    whole is 0.5 up to those roundings (half a weight per matrix at most)."""
    record = run(config(tmp_path, "model=onevision_tiny", "suite=none", "calib=digits", "scorer=zeroth",
                        "sparsity=0.5", "calib.num_samples=8", "calib.batch_size=4", "scorer.num_samples=8"))
    assert {m.tower for m in record.matrices} == {"vision", "language"}
    assert len(set(record.plan.values())) > 1
    zeros = 0
    for m in record.matrices:
        n = m.rows * m.cols
        assert round(record.achieved.per_matrix[m.name] * n) == round(m.planned_sparsity * n), m.name
        zeros += round(m.planned_sparsity * n)
    total = record.achieved.prunable_params
    assert record.achieved.overall == zeros / total
    assert abs(zeros - total / 2) <= len(record.matrices) / 2


@pytest.mark.slow
def test_run_from_llava_conversations_prunes_every_tower_to_exactly_the_target(tmp_path):
    """run.py on a file in LLaVA's format, the projector included: uniform Wanda prunes exactly half of
    every tower (every row prunes half of an even number of columns)."""
    path = write_llava_conversations(tmp_path / "data" / "llava")
    record = run(config(tmp_path, "model=onevision_tiny", "suite=none", "calib=llava_instruct",
                        f"calib.annotations={path}", "calib.num_samples=4", "calib.batch_size=2", "scorer=uniform",
                        "sparsity=0.5", "model.prune_towers=[vision,projector,language]"))
    assert record.achieved.overall == 0.5
    assert record.achieved.per_tower == {t: 0.5 for t in ALL_TOWERS}
