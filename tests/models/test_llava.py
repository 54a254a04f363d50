"""LLaVA-1.5 (a tiny random model of the real class): its blocks, its conversation template, its answer
tokens as LLaVA's own targets, its square image padding."""

import pytest
import torch
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE
from tests.models.test_chat import (
    SAMPLES,
    SHORT_ANSWER,
    VICUNA_SYSTEM,
    image,
    make,
    sentencepiece_like_tokenizer,
    tokenizer_image_token,
    vicuna_v1_prompt,
)


def test_vision_layers_after_llavas_feature_layer_are_not_blocks():
    """LLaVA-1.5 reads the second-to-last ViT layer: the last one changes nothing and is not a
    block; the deepest block does change the logits."""
    adapter = make("llava_tiny")
    layers = adapter.model.model.vision_tower.encoder.layers
    vision = adapter.towers()[0]
    assert [b.module for b in vision.blocks] == list(layers[:-1])
    batch = adapter.collate(SAMPLES[:2])
    with torch.no_grad():
        before = adapter.forward(batch)
        for p in layers[-1].parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(adapter.forward(batch), before, rtol=0, atol=0)
        for p in vision.blocks[-1].module.parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(adapter.forward(batch), before)


def test_llava_is_prompted_with_llavas_own_conversation_template():
    """Calibration and evaluation text as LLaVA-1.5's scripts build it: conv_vicuna_v1, `<image>\\n`
    before the first question (model_vqa_loader: DEFAULT_IMAGE_TOKEN + '\\n' + qs)."""
    adapter = make("llava_tiny")
    question = SHORT_ANSWER.format("What is on the table?")
    expected = vicuna_v1_prompt([("USER", "<image>\n" + question), ("ASSISTANT", None)])
    assert expected == (f"{VICUNA_SYSTEM} USER: <image>\nWhat is on the table?\nAnswer the question using a single "
                        "word or phrase. ASSISTANT:")
    seen = []
    original = adapter.processor.__call__

    def spy(*args, **kwargs):
        seen.append(kwargs["text"])
        return original(*args, **kwargs)

    adapter.processor.__class__ = type("Spied", (type(adapter.processor),),
                                       {"__call__": lambda self, *a, **k: spy(*a, **k)})
    adapter.generate([image(0)], [question], max_new_tokens=2, num_beams=1)
    assert seen[-1] == [expected]  # the byte tokenizer adds no BOS text
    turns = (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup."), ("human", "And beside it?"),
             ("gpt", "A spoon"))
    adapter.collate([(image(0), turns)])
    assert seen[-1] == [vicuna_v1_prompt([("USER", "<image>\nWhat is on the table?"), ("ASSISTANT", "A red cup."),
                                          ("USER", "And beside it?"), ("ASSISTANT", "A spoon")])]
    assert seen[-1][0].endswith("? ASSISTANT: A red cup.</s>USER: And beside it? ASSISTANT: A spoon</s>")


def llava_reference(conversation, tokenizer):
    """LLaVA's training ids and targets (llava/train/train.py preprocess_v1 for conv_vicuna_v1, a
    legacy tokenizer): per round split at "</s>", the instruction through "ASSISTANT: " masked
    (its token count less BOS and the trailing space's), the round's tokens and its "</s>" kept."""
    ids = tokenizer_image_token(conversation, tokenizer)
    target = list(ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE]
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tokenizer))
        instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE] * len(target[cur_len:])
    assert cur_len == len(ids)  # else LLaVA masks the whole sample ("tokenization mismatch")
    return ids, target


def llava_with(tokenizer):
    import transformers

    from ecoflap_exp.models.llava import VICUNA_V1_TEMPLATE

    adapter = make("llava_tiny")
    old = adapter.processor
    adapter.processor = transformers.LlavaProcessor(
        image_processor=old.image_processor, tokenizer=tokenizer, patch_size=old.patch_size,
        vision_feature_select_strategy=old.vision_feature_select_strategy, num_additional_image_tokens=1,
        chat_template=VICUNA_V1_TEMPLATE)
    return adapter


def test_a_tokenizer_that_merges_a_prompt_into_its_answer_is_named():
    """Pieces across word boundaries ("T:▁A▁"): the answer's first token would hold the prompt's end."""
    adapter = llava_with(sentencepiece_like_tokenizer(words=False))
    with pytest.raises(UserError, match="merges tokens across the boundary of a prompt and its answer"):
        adapter.collate([(image(0), (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup.")))])


def test_llava_answer_tokens_are_llavas_own_targets_with_no_stray_token():
    """With a SentencePiece-like tokenizer the answer's tokens are the ones the whole conversation
    gives (LLaVA tokenizes it at once) and the targets are preprocess_v1's: the answer and its
    "</s>", nothing between them and nothing from the prompt."""
    adapter = llava_with(sentencepiece_like_tokenizer())
    tokenizer = adapter.tokenizer
    turns = (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup."), ("human", "And beside it?"),
             ("gpt", "A spoon"))
    batch = adapter.collate([(image(0), turns)])
    conversation = vicuna_v1_prompt([("USER", "<image>\nWhat is on the table?"), ("ASSISTANT", "A red cup."),
                                     ("USER", "And beside it?"), ("ASSISTANT", "A spoon")])
    ref_ids, ref_target = llava_reference(conversation, tokenizer)
    image_id = adapter.processor.image_token_id
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    first = ids.index(image_id)
    run = ids.count(image_id)
    assert ids[first : first + run] == [image_id] * run and run > 1
    collapsed_ids = ids[:first] + [-200] + ids[first + run:]
    collapsed_labels = labels[:first] + [IGNORE] + labels[first + run:]
    assert collapsed_ids == ref_ids
    assert collapsed_labels == ref_target
    assert tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE]) == [
        "▁A", "▁red", "▁cup.", "</s>", "▁A", "▁spoon", "</s>"]


def test_llava_pads_images_to_a_square_of_the_mean_colour_as_expand2square():
    """llava/mm_utils.py expand2square with background tuple(int(x*255) for x in image_mean): the image
    centred on the longer side, offsets floored ((w - h) // 2), then the processor."""
    from ecoflap_exp.models.llava import expand2square

    wide = Image.new("RGB", (5, 2), (255, 0, 0))
    square = expand2square(wide, (122, 116, 104))
    assert square.size == (5, 5)
    column = [square.getpixel((0, y)) for y in range(5)]
    assert column == [(122, 116, 104), (255, 0, 0), (255, 0, 0), (122, 116, 104), (122, 116, 104)]  # (5-2)//2 = 1
    tall = Image.new("RGB", (2, 5), (0, 255, 0))
    assert [expand2square(tall, (1, 2, 3)).getpixel((x, 0)) for x in range(5)] == [
        (1, 2, 3), (0, 255, 0), (0, 255, 0), (1, 2, 3), (1, 2, 3)]
    assert expand2square(square, (0, 0, 0)) is square
    adapter = make("llava_tiny")
    # CLIP's mean (0.48145466, 0.4578275, 0.40821073) * 255, truncated: LLaVA's background
    assert adapter.background == (122, 116, 104)
    picture = image(5, (20, 40))  # 40 wide, 20 high
    padded = adapter.processor.image_processor(expand2square(picture, (122, 116, 104)), return_tensors="pt")
    batch = adapter.collate([(picture, "a caption")])
    torch.testing.assert_close(batch["pixel_values"], padded["pixel_values"])
    cropped = make("llava_tiny", pad_to_square=False).collate([(picture, "a caption")])
    assert not torch.allclose(cropped["pixel_values"], batch["pixel_values"])
