"""LLaVA-OneVision through transformers: LlavaOnevisionForConditionalGeneration
(llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP-so400m/14 at 384 px, a two-layer MLP projector, Qwen2-7B).

Images at any resolution ("anyres"): the image processor resizes each image to the best of the
`image_grid_pinpoints`, cuts it into crops of the vision tower's size and puts the whole image,
resized, first; `pixel_values` per image is (crops, 3, H, W), the crop count varying with the
image's aspect ratio. A batch pads the crop axis with zeros to the most crops, as the image
processor pads a batch of several images (`_pad_for_batching`); the model keeps each image's first
crops (their count from `image_sizes`), so the vision tower never sees a padding crop.

Towers in pruning order (each one's blocks found as the longest block list under its module):
- `vision`: the SigLIP encoder layers whose output reaches the image features. The -ov checkpoints
  read the last layer's hidden states (`vision_feature_layer=-1`; llava-hf's vision config holds 26
  of SigLIP-so400m's 27 layers, the original code's select layer -2) with every token
  (`vision_feature_select_strategy="full"`: SigLIP has no CLS), so every layer is a block; layers
  after a shallower feature layer (an `arch_overrides` of vision_feature_layer) compute nothing the
  model uses and are not blocks, as for LLaVA-1.5. The post-layernorm output is not read either
  (hidden state -1 is the last layer's output before it; a LayerNorm holds no prunable matrix). The
  tower's samples are crops (its batch axis): Wanda counts and intrinsic dimensions are per crop;
- `projector`: multi_modal_projector (linear_1, linear_2) as one block; pruned only when
  `prune_towers` names it;
- `language`: the Qwen2 decoder layers, fed the prompt with the image features spliced in at the
  `<image>` tokens by the model's own forward: per image the whole-image crop's features, then the
  other crops' features rearranged into the image's grid with the padding of the resize cut off,
  shrunk when larger than `vision_aspect_ratio` allows (anyres_max_9: 9 crops' worth), and
  `image_newline` after each row. `image_newline` is one learned vector (a 1-D parameter of the
  model, not a Linear, outside every block): it is never pruned and stays dense. Pads are kept out
  of statistics.

Wanda compares per output row in every tower. LLaVA-OneVision as its authors run it
(LLaVA-VL/LLaVA-NeXT): `conversation=qwen` renders every conversation with the `qwen_1_5` template
their training and lmms-eval's llava_onevision use (llava/conversation.py conv_qwen: ChatML with
the system prompt "You are a helpful assistant.", each question after `<image>\\n`, `<|im_start|>
assistant\\n` to generate); `checkpoint` uses the processor's own template. llava-hf's -ov template
opens a past assistant turn with "assistant " and a new one with "assistant\\n", so a prompt is not
a prefix of its answered turn and the answer's tokens cannot be located: calibration with it is
refused (chat.ChatVLMAdapter.segments). With `tokenizer=bytes` (the tiny architecture, or the
real one at `init=random`) the processor is built here: ByT5's byte tokenizer with Qwen2's ChatML
tokens and `<image>`/`<video>`, LLaVA-OneVision's image processor at the tower's size with the
architecture's pinpoints, and the -ov-hf chat template; the model config takes its token ids.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import transformers
from torch.nn import functional as F

from ecoflap_exp.models.chat import ChatVLMAdapter, checkpoint_processor
from ecoflap_exp.models.loading import DType
from ecoflap_exp.models.seam import Tower

#: llava-hf/llava-onevision-qwen2-7b-ov-hf's chat_template.json (ChatML; images, then videos, then "\n" + text)
ONEVISION_HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: LLaVA-NeXT's conv_qwen (llava/conversation.py, SeparatorStyle.CHATML, the `qwen_1_5` template of
#: LLaVA-OneVision's training and lmms-eval): system + "<|im_end|>\n", then role + "\n" + message +
#: "<|im_end|>\n" per turn, the image as "<image>\n" before the first question, role + "\n" to generate
QWEN_SYSTEM = "You are a helpful assistant."
QWEN_TEMPLATE = (
    "<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: Qwen2's ChatML tokens and LLaVA-OneVision's image and video tokens (the -ov-hf tokenizer's added tokens)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<image>", "<video>")
Conversation = Literal["qwen", "checkpoint"]


def load_processor(tokenizer: str | None, checkpoint: str | None, config: Any) -> Any:
    if tokenizer != "bytes":
        return checkpoint_processor(tokenizer, checkpoint)
    byte_tokenizer = transformers.ByT5Tokenizer(eos_token="<|im_end|>")
    byte_tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    vision = config.vision_config
    side = {"height": vision.image_size, "width": vision.image_size}
    images = transformers.LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=config.image_grid_pinpoints)
    videos = transformers.LlavaOnevisionVideoProcessor(size=side)
    return transformers.LlavaOnevisionProcessor(
        image_processor=images, video_processor=videos, tokenizer=byte_tokenizer,
        num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio, chat_template=ONEVISION_HF_TEMPLATE)


class LlavaOnevisionAdapter(ChatVLMAdapter):
    """`checkpoint` a hub name or folder (llava-hf/llava-onevision-qwen2-7b-ov-hf), or `init=random`
    with a shipped `arch`; `tokenizer`: the checkpoint's processor, or `bytes`; `conversation`:
    `qwen` (the authors' qwen_1_5) or `checkpoint` (the processor's template)."""

    def __init__(self, dtype: DType = "bfloat16", tokenizer: str | None = None, conversation: Conversation = "qwen",
                 **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.LlavaOnevisionForConditionalGeneration, dtype)
        self.processor = load_processor(tokenizer, self.checkpoint, self.model.config)
        if conversation == "qwen":
            self.processor.chat_template = QWEN_TEMPLATE
        if tokenizer == "bytes":
            config = self.model.config
            config.image_token_id, config.video_token_id = self.processor.image_token_id, self.processor.video_token_id

    @property
    def answer_end(self) -> str:
        """ChatML's end of turn, which both templates write after every answer, whatever the tokenizer's EOS."""
        return "<|im_end|>"

    def joined(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """Pixels, (1, crops, 3, H, W) per sample with as many crops as the image's grid needs, padded
        with zero crops to the most crops (the image processor's _pad_for_batching)."""
        if key == "pixel_values":
            most = max(v.shape[1] for v in values)
            values = [F.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[1])) for v in values]
        return super().joined(key, values)

    def all_towers(self) -> list[Tower]:
        return self.projected_towers(self.model.config.vision_feature_layer)
