"""Qwen2.5-VL through transformers: Qwen2_5_VLForConditionalGeneration (Qwen/Qwen2.5-VL-7B-Instruct: a
ViT with windowed attention over native-resolution 14 px patches, 2-D rotary positions, SwiGLU MLPs
and RMSNorm, a patch merger, Qwen2.5-7B with M-RoPE).

Towers, processor and chat template are Qwen2-VL's (models/qwen2_vl.py): `vision` (model.visual.blocks),
`projector` (the merger, pruned only when `prune_towers` names it), `language` (the decoder layers fed the
merged image features and M-RoPE's 3-D positions by the model's own forward). What differs is the ViT:
its forward reorders the patches by window (each image's patches stay within its own rows, so an image's
share of the sequence is still its patch count) and runs most blocks with windowed attention, the
sequence cut at the windows' boundaries (`cu_window_seqlens`: windows of `window_size` pixels), and the
blocks in `vision_config.fullatt_block_indexes` with full attention within each image (`cu_seqlens`).
So the blocks' `cu_seqlens` and `max_seqlen` differ from block to block; the walk hands each block the
arguments the model's forward hands it (walk.capture_arguments), never block 0's. The merger's output is
put back in patch order by the model after the merger, outside the projector block.
"""

from __future__ import annotations

from typing import Any

import transformers

from ecoflap_exp.models.qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """`checkpoint` a hub name or folder (Qwen/Qwen2.5-VL-7B-Instruct), or `init=random` with a shipped
    `arch`; `tokenizer`: the checkpoint's processor, or `bytes`; `min_pixels`/`max_pixels` as Qwen2-VL's."""

    @classmethod
    def model_class(cls) -> Any:
        return transformers.Qwen2_5_VLForConditionalGeneration

    @classmethod
    def processor_class(cls) -> Any:
        return transformers.Qwen2_5_VLProcessor
