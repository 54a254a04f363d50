"""LLaVA-1.5 through transformers: LlavaForConditionalGeneration (llava-hf/llava-1.5-7b-hf: CLIP
ViT-L/14-336, a two-layer MLP projector, Vicuna-7B).

Towers in pruning order (each one's blocks found as the longest block list under its module):
- `vision`: the CLIP encoder layers whose output reaches the image features. LLaVA-1.5 reads the
  second-to-last layer's hidden states (`vision_feature_layer=-2`) and drops CLS, so its last
  ViT layer computes nothing the model uses: it is not a prunable block (its weights would only
  dilute the sparsity that matters, and any score of it is 0);
- `projector`: multi_modal_projector (linear_1, linear_2) as one block; pruned only when
  `prune_towers` names it;
- `language`: the LLaMA decoder layers, fed the prompt with the projected image features spliced
  in at the `<image>` tokens by the model's own forward; pads are kept out of statistics.

Wanda compares per output row in every tower (Wanda's LLaMA choice; CLIP's per ECoFLaP). With
`tokenizer=bytes` (the tiny architecture, or the real one at `init=random`) the processor is built
here: ByT5's byte tokenizer with an `<image>` token, a CLIP image processor at the tower's size,
and a template of llava-hf's USER:/ASSISTANT: form; the model config takes its token ids.

LLaVA-1.5 as its authors run it (haotian-liu/LLaVA): `conversation=vicuna_v1` renders every
conversation, in calibration and evaluation, with the `vicuna_v1` template its training and eval
scripts use (llava/conversation.py: the system prompt, "USER: " and "ASSISTANT: " turns, " " after
a question and "</s>" after an answer, "ASSISTANT:" to generate), where llava-hf's template has
no system prompt and ends an answer with a space; `pad_to_square` pads each image to a square of
the image processor's mean colour before the processor (LLaVA-1.5's image_aspect_ratio "pad":
mm_utils.expand2square), where llava-hf's processor centre-crops.
"""

from __future__ import annotations

from typing import Any, Literal

import transformers
from PIL import Image

from ecoflap_exp.models.chat import ChatVLMAdapter, checkpoint_processor
from ecoflap_exp.models.loading import CLIP_MEAN, CLIP_STD, DType
from ecoflap_exp.models.seam import Tower

#: llava-hf's chat template for LLaVA-1.5 (Vicuna's USER:/ASSISTANT: turns, images first)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% else %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


#: LLaVA's conv_vicuna_v1 (llava/conversation.py, SeparatorStyle.TWO): system + " ", then "USER: " + question
#: + " " and "ASSISTANT: " + answer + "</s>" per round, "ASSISTANT:" for the answer to generate
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_V1_TEMPLATE = (
    '{{ "' + VICUNA_V1_SYSTEM + ' " }}{% for message in messages %}{% if message[\'role\'] == \'user\' %}'
    "{{ 'USER: ' }}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ ' ' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '</s>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
Conversation = Literal["vicuna_v1", "checkpoint"]


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's mm_utils.expand2square: the image centred (offsets floored) on a square of its longer side."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def load_processor(tokenizer: str | None, checkpoint: str | None, config: Any) -> Any:
    if tokenizer != "bytes":
        return checkpoint_processor(tokenizer, checkpoint)
    byte_tokenizer = transformers.ByT5Tokenizer()
    byte_tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    size = config.vision_config.image_size
    images = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                             image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return transformers.LlavaProcessor(image_processor=images, tokenizer=byte_tokenizer,
                                       patch_size=config.vision_config.patch_size,
                                       vision_feature_select_strategy=config.vision_feature_select_strategy,
                                       num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)


class LlavaAdapter(ChatVLMAdapter):
    """`checkpoint` a hub name or folder (llava-hf/llava-1.5-7b-hf), or `init=random` with a shipped
    `arch`; `tokenizer`: the checkpoint's processor, or `bytes`; `conversation`: `vicuna_v1` (LLaVA's)
    or `checkpoint` (the processor's template); `pad_to_square`: LLaVA's padding of images."""

    #: the colour images are padded to a square with (None: not padded)
    background: tuple[int, ...] | None = None

    def __init__(self, dtype: DType = "float16", tokenizer: str | None = None, conversation: Conversation = "vicuna_v1",
                 pad_to_square: bool = True, **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.LlavaForConditionalGeneration, dtype)
        self.processor = load_processor(tokenizer, self.checkpoint, self.model.config)
        if conversation == "vicuna_v1":
            self.processor.chat_template = VICUNA_V1_TEMPLATE
        mean = self.processor.image_processor.image_mean
        self.background = tuple(int(x * 255) for x in mean) if pad_to_square else None
        if tokenizer == "bytes":
            self.model.config.image_token_id = self.processor.image_token_id

    def image_view(self, image: Image.Image) -> Image.Image:
        image = super().image_view(image)
        return expand2square(image, self.background) if self.background is not None else image

    def all_towers(self) -> list[Tower]:
        return self.projected_towers(self.model.config.vision_feature_layer)
