"""Qwen2-VL through transformers: Qwen2VLForConditionalGeneration (Qwen/Qwen2-VL-7B-Instruct: a
675M ViT over native-resolution 14 px patches with 2-D rotary positions, a patch merger, Qwen2-7B).

Towers in pruning order (each one's blocks found as the longest block list under its module):
- `vision`: model.visual.blocks (fused qkv, proj, fc1, fc2). The ViT runs every image of a batch
  as one sequence of patches, (patches, width) with no batch axis; each block receives
  `cu_seqlens` (where each image's patches start: attention stays within an image),
  `max_seqlen` and the rotary `position_embeddings` of the patch grid, captured with its input;
  each image's share of the sequence travels with it (`sample_sizes`), so intrinsic dimensions
  are measured per image, not per patch;
- `projector`: the patch merger (model.visual.merger: LayerNorm, then a 2-layer MLP over 2x2
  merged patches) as one block; pruned only when `prune_towers` names it;
- `language`: the Qwen2 decoder layers, whose inputs are built by the model's own forward: the
  merged image features spliced in at the `<|image_pad|>` tokens and the rotary embeddings of
  M-RoPE's 3-D (temporal, height, width) position ids, computed from the ids, the token types
  and the image grids; pads are kept out of statistics.

With `tokenizer=bytes` the processor is built here:
ByT5's byte tokenizer with Qwen2-VL's special tokens, Qwen2-VL's image processor at the
architecture's patch and merge sizes, and a ChatML template of Qwen2-VL-Instruct's form; the
model config takes its token ids.
"""

from __future__ import annotations

from typing import Any

import transformers

from ecoflap_exp.models.chat import ChatVLMAdapter, checkpoint_processor
from ecoflap_exp.models.loading import DType
from ecoflap_exp.models.seam import Batch, Block, Tower, blocks_of, find_block_list, linear_matrices
from ecoflap_exp.options import Count

#: Qwen2-VL-Instruct's chat template (ChatML, a default system turn, the image inline)
QWEN2VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>")


def load_processor(tokenizer: str | None, checkpoint: str | None, config: Any, pixels: dict[str, int],
                   processor_class: Any) -> Any:
    if tokenizer != "bytes":
        return checkpoint_processor(tokenizer, checkpoint, **pixels)
    byte_tokenizer = transformers.ByT5Tokenizer(eos_token="<|im_end|>")
    byte_tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    vision = config.vision_config
    sizes = {"patch_size": vision.patch_size, "merge_size": vision.spatial_merge_size,
             "temporal_patch_size": vision.temporal_patch_size, **pixels}
    return processor_class(image_processor=transformers.Qwen2VLImageProcessor(**sizes),
                           video_processor=transformers.Qwen2VLVideoProcessor(**sizes),
                           tokenizer=byte_tokenizer, chat_template=QWEN2VL_TEMPLATE)


def patches_per_image(batch: Batch) -> list[int]:
    """Each image's patches in the ViT's one sequence of all the batch's patches."""
    return batch["image_grid_thw"].prod(-1).tolist()


class Qwen2VLAdapter(ChatVLMAdapter):
    """`checkpoint` a hub name or folder (Qwen/Qwen2-VL-7B-Instruct), or `init=random` with a shipped
    `arch`; `tokenizer`: the checkpoint's processor, or `bytes`. `min_pixels`/`max_pixels` bound
    each image's resized area (null: the processor's own; Qwen2-VL's default allows 12.8M pixels,
    16,384 visual tokens, per image)."""

    @classmethod
    def model_class(cls) -> Any:
        """The transformers class the model loads through."""
        return transformers.Qwen2VLForConditionalGeneration

    @classmethod
    def processor_class(cls) -> Any:
        """The processor class the byte tokenizer's processor is built as (`tokenizer=bytes`)."""
        return transformers.Qwen2VLProcessor

    def __init__(self, dtype: DType = "bfloat16", tokenizer: str | None = None, min_pixels: Count | None = None,
                 max_pixels: Count | None = None, **common: Any):
        super().__init__(**common)
        self.model = self.load_model(self.model_class(), dtype)
        pixels = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
        self.processor = load_processor(tokenizer, self.checkpoint, self.model.config, pixels, self.processor_class())
        if tokenizer == "bytes":
            ids = dict(zip(SPECIAL_TOKENS, self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)), strict=True))
            config = self.model.config
            config.image_token_id, config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
            config.vision_start_token_id, config.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]

    def all_towers(self) -> list[Tower]:
        inner = self.model.model
        merger = inner.visual.merger
        lm_path, lm_layers = find_block_list(inner.language_model)
        return [
            # the ViT's root holds the merger, so it reads the projector tower: never served while
            # the merger is pruned or perturbed
            Tower("vision", blocks_of("model.visual.blocks", inner.visual.blocks), root=inner.visual, reads=(),
                  sample_sizes=patches_per_image),
            Tower("projector", [Block("model.visual.merger", merger, linear_matrices("model.visual.merger", merger))],
                  root=merger, reads=("vision",), sample_sizes=patches_per_image),
            Tower("language", blocks_of(f"model.language_model.{lm_path}", lm_layers), token_masks=self.language_mask,
                  reads=("projector",)),
        ]
