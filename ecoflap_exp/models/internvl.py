"""InternVL3 through transformers: InternVLForConditionalGeneration (OpenGVLab/InternVL3-8B-hf: InternViT-300M
over 448 px tiles, pixel shuffle and an MLP projector, Qwen2.5-7B).

The processor cuts each image into tiles of the ViT's size (a grid of the aspect ratio nearest the image's,
at most `max_tiles`, plus a thumbnail of the whole image when there is more than one tile), so an image is a
variable number of tiles and a batch's `pixel_values` is every sample's tiles one after the other, (tiles,
3, H, W); each tile becomes `<img>`, image_seq_length `<IMG_CONTEXT>` tokens, `</img>` in the text. The
batch keeps each sample's tile count (`image_tiles`), which the model's forward does not take.

Towers in pruning order (each one's blocks found as the longest block list under its module):
- `vision`: InternViT's layers (q, k, v, projection_layer, fc1, fc2; layer scale lambda_1/lambda_2, LayerNorm
  or RMSNorm by config). The tiles are its batch: every tile is an image to the ViT, so statistics and
  intrinsic dimensions count tiles as samples. InternVL3 reads the last layer (`vision_feature_layer=-1`)
  and drops CLS after it;
- `projector`: multi_modal_projector (LayerNorm, linear_1, GELU, linear_2 over the 2x2 pixel-shuffled
  patches) as one block; pruned only when `prune_towers` names it;
- `language`: the Qwen2 decoder layers, fed the prompt with the projected tiles spliced in at the
  `<IMG_CONTEXT>` tokens by the model's own forward; pads are kept out of statistics.

With `tokenizer=bytes` the processor is built here: ByT5's byte tokenizer with InternVL's image tokens and
ChatML's, InternVL's tiling image processor at the architecture's tile size, and InternVL3-hf's ChatML
template; the model config takes the `<IMG_CONTEXT>` id.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.chat import ChatVLMAdapter, Turns, checkpoint_processor
from ecoflap_exp.models.loading import DType
from ecoflap_exp.models.seam import Batch, Tower
from ecoflap_exp.options import Count

#: InternVL3-hf's chat template (OpenGVLab/InternVL3-8B-hf chat_template): ChatML with no default system turn,
#: the image as `<IMG_CONTEXT>` and a newline before the text (the processor expands it to the tiles' tokens)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: the tokenizer attributes InternVLProcessor reads, with InternVL3-hf's tokens
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
#: InternVL's image normalisation (IMAGENET_MEAN / IMAGENET_STD of its preprocessor_config.json)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: each sample's tile count in a batch (not a model input)
TILES_KEY = "image_tiles"


def tokens_per_tile(config: Any) -> int:
    """Image tokens of one tile: the ViT's patches, pixel-shuffled by `downsample_ratio` (448/14 = 32 patches a
    side, 0.5 -> 256 for InternVL3)."""
    vision = config.vision_config
    patches = (vision.image_size[0] // vision.patch_size[0]) * (vision.image_size[1] // vision.patch_size[1])
    return int(patches * config.downsample_ratio**2)


def load_processor(tokenizer: str | None, checkpoint: str | None, config: Any) -> Any:
    if tokenizer != "bytes":
        return checkpoint_processor(tokenizer, checkpoint)
    # ByT5 strips the spaces and newlines around a plain-string EOS; Qwen2's tokenizer keeps the "\n" after
    # <|im_end|> a token of its own, which the answer's target ends with
    end_of_turn = transformers.AddedToken("<|im_end|>", special=True, normalized=False)
    byte_tokenizer = transformers.ByT5Tokenizer(eos_token=end_of_turn, extra_special_tokens=dict(IMAGE_TOKENS))
    byte_tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]},
                                      replace_extra_special_tokens=False)
    height, width = config.vision_config.image_size
    images = transformers.GotOcr2ImageProcessor(size={"height": height, "width": width}, crop_to_patches=True,
                                                image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    videos = transformers.InternVLVideoProcessor(size={"height": height, "width": width},
                                                 image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    return transformers.InternVLProcessor(image_processor=images, tokenizer=byte_tokenizer, video_processor=videos,
                                          image_seq_length=tokens_per_tile(config), chat_template=INTERNVL_TEMPLATE)


class InternVLAdapter(ChatVLMAdapter):
    """`checkpoint` a hub name or folder (OpenGVLab/InternVL3-8B-hf), or `init=random` with a shipped `arch`;
    `tokenizer`: the checkpoint's processor, or `bytes`; `max_tiles`: the most tiles an image is cut into
    (the thumbnail not counted; null: the processor's, 12 for InternVL3)."""

    def __init__(self, dtype: DType = "bfloat16", tokenizer: str | None = None, max_tiles: Count | None = None,
                 **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.InternVLForConditionalGeneration, dtype)
        if self.model.config.vision_feature_layer != -1:
            raise UserError(f"InternVL with vision_feature_layer={self.model.config.vision_feature_layer} is not "
                            f"supported: the vision tower's blocks are every ViT layer, as InternVL3 reads the last")
        self.processor = load_processor(tokenizer, self.checkpoint, self.model.config)
        if max_tiles is not None:
            self.processor.image_processor.max_patches = max_tiles
        if tokenizer == "bytes":
            self.model.config.image_token_id = self.processor.image_token_id

    def encode(self, image: Image.Image, turns: Turns) -> tuple[dict[str, torch.Tensor], list[int]]:
        """ChatVLMAdapter.encode, and the image's tile count (the processor's pixel rows of it)."""
        encoded, labels = super().encode(image, turns)
        encoded[TILES_KEY] = torch.tensor([len(encoded["pixel_values"])])
        return encoded, labels

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {key: value for key, value in super().inputs(batch).items() if key != TILES_KEY}

    def all_towers(self) -> list[Tower]:
        return self.projected_towers()
