"""BLIP captioning through transformers (BlipForConditionalGeneration): the ID paper's COCO captioner
(BLIP ViT-B/16 at 384 px, salesforce/BLIP's model_base_caption_capfilt_large.pth).

Weights: a hub name or folder, or an original BLIP checkpoint (`.pth`, salesforce/BLIP's layout:
{"model": BLIP_Decoder's state dict}) loaded into the shipped architecture. The ID paper fine-tunes
model_base_caption_capfilt_large.pth (COCO-finetuned); transformers' conversion script, which made
Salesforce/blip-image-captioning-base, converts model_base_capfilt_large.pth (pre-trained only), so
`blip_caption_coco` loads the original file. Its ViT is BLIP's (LayerNorm eps 1e-6, salesforce/BLIP
models/vit.py), its names renamed as that conversion script renames them.

Towers in pruning order, each block's matrices found by type (the paper prunes all of them):
- `vision`: vision_model.encoder.layers (self_attn.qkv, as one fused matrix like BLIP's attn.qkv,
  self_attn.projection, mlp.fc1, mlp.fc2); Wanda ranks each whole matrix, as UPop's BLIP pruner;
- `text`: text_decoder.bert.encoder.layer (self-attention q, k, v and output, cross-attention q,
  k, v (reading the image states) and output, intermediate and output dense).

Samples are BLIP's captioning inputs (salesforce/BLIP blip_decoder): the text is the prompt ("a
picture of ") and the caption cleaned by pre_caption (at most 30 words), tokenised to at most 40
tokens and padded to the longest of the batch, its first token the decoder's BOS ([DEC]); the
loss is the shifted next-token cross-entropy over the caption's tokens only (prompt and pads
ignored) with label smoothing 0.1. Training images get BLIP's crop and flip (RandomResizedCrop
scale 0.5-1, bicubic; its RandAugment is not applied). Captions are generated with the prompt
(beam 3, 5-20 tokens in the reference's eval config) and the prompt's characters cut from the
decoded text, as blip_decoder.generate does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import transformers
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE, LossTerm
from ecoflap_exp.models.blip2 import InterpolatesPositions, blip2_image_train, image_batch, square_resize
from ecoflap_exp.models.blip_text import blip_caption
from ecoflap_exp.models.loading import (
    CLIP_MEAN,
    CLIP_STD,
    DType,
    load_tokenizer,
    load_transformers_model,
    merged,
    wrapped_state,
)
from ecoflap_exp.models.seam import Batch, Tower, blocks_of
from ecoflap_exp.options import Count, Fraction

PROMPT = "a picture of "
#: BLIP's ViT norms (salesforce/BLIP models/vit.py: norm_layer = partial(nn.LayerNorm, eps=1e-6))
ORIGINAL_VISION_EPS = 1e-6
#: BLIP_Decoder's ViT names -> BlipForConditionalGeneration's, applied in order to each name (the
#: renames of transformers' convert_blip_original_pytorch_to_hf.py); text_decoder.* is named alike
VISION_RENAMES = (
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.norm.", "vision_model.post_layernorm."),
    ("visual_encoder.blocks.", "vision_model.encoder.layers."),
    (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."), (".attn.proj.", ".self_attn.projection."),
)
#: buffers BLIP saves that transformers rebuilds (non-persistent there)
REBUILT = ("text_decoder.bert.embeddings.position_ids",)


def original_blip_state(path: str) -> dict[str, torch.Tensor]:
    """An original BLIP checkpoint's captioner weights under transformers' names; what else it
    holds (a pre-training checkpoint's momentum encoders, text encoder, ITM head) is left out, as
    BLIP's load_checkpoint ignores it."""
    state = wrapped_state(path, "BLIP", "give a hub name or a transformers folder instead")
    out = {}
    for name, tensor in state.items():
        if name.startswith("visual_encoder."):
            for old, new in VISION_RENAMES:
                name = name.replace(old, new)
            out[name] = tensor
        elif name.startswith("text_decoder.") and name not in REBUILT:
            out[name] = tensor
    return out


class BlipCaptionAdapter(InterpolatesPositions):
    """`checkpoint`: a hub name or folder (Salesforce/blip-image-captioning-base, -large), an
    original BLIP `.pth` (built as the shipped `arch` with BLIP's ViT norms, then loaded), or
    `init=random` with a shipped `arch`; `tokenizer`: the checkpoint's (a hub name with a `.pth`),
    or `bytes` for the tiny architecture."""

    sample_kinds = ("image_captions",)
    has_train_augmentation = True
    load_hint = ("transformers.{model_class}.from_pretrained({path!r}); "
                 "transformers.BlipProcessor.from_pretrained({path!r})")
    #: salesforce/BLIP's README: the COCO captioner (ViT-B, CapFilt-L)
    released_files = MappingProxyType({"model_base_caption_capfilt_large.pth": "https://storage.googleapis.com/"
                                       "sfr-vision-language-research/BLIP/models/model_base_caption_capfilt_large.pth"})

    def __init__(self, dtype: DType = "float32", tokenizer: str | None = None, prompt: str = PROMPT,
                 max_words: Count = 30, max_text_tokens: Count = 40, label_smoothing: Fraction = 0.1, **common: Any):
        super().__init__(**common)
        checkpoint = self.checkpoint
        pth = str(checkpoint).endswith(".pth")
        arch_overrides = self.arch_overrides
        if pth:  # BLIP's own architecture, also when its shapes are built at random
            arch_overrides = merged({"vision_config": {"layer_norm_eps": ORIGINAL_VISION_EPS}}, arch_overrides or {})
        original = self.init == "pretrained" and pth
        if original and tokenizer is None:
            raise UserError(f"model.checkpoint={checkpoint} is an original BLIP checkpoint, which holds no "
                            f"tokenizer; set model.tokenizer (Salesforce/blip-image-captioning-base)")
        self.model = load_transformers_model(transformers.BlipForConditionalGeneration, self.arch,
                                             None if original else checkpoint, "random" if original else self.init,
                                             dtype, self.seed, arch_overrides)
        if original:
            self.load_original(str(checkpoint))
        self.tokenizer = load_tokenizer(tokenizer or checkpoint)
        self.prompt, self.max_words, self.max_text_tokens = prompt, max_words, max_text_tokens
        self.label_smoothing = label_smoothing
        text = self.model.config.text_config
        self.bos, self.sep, self.pad = text.bos_token_id, text.sep_token_id, text.pad_token_id
        size = self.model.config.vision_config.image_size
        # BLIP's training view is BLIP-2's (crop 0.5-1, flip) plus a RandAugment not applied here
        self.preprocess, self.train_preprocess = square_resize(size), blip2_image_train(size)

    def load_original(self, path: str) -> None:
        """Every weight of the captioner from an original BLIP checkpoint (UserError naming what is missing)."""
        state = original_blip_state(path)
        self.load_weights(state, ("vision_model.", "text_decoder."), path)
        missing = sorted(set(self.model.state_dict()) - set(state))
        if missing:
            raise UserError(f"{path} lacks {len(missing)} weight(s) of the BLIP captioner (first: {missing[0]}); is it "
                            f"a BLIP captioning checkpoint (model_base_caption_capfilt_large.pth)?")

    def all_towers(self) -> list[Tower]:
        vision = self.model.vision_model
        layers = self.model.text_decoder.bert.encoder.layer
        text = blocks_of("text_decoder.bert.encoder.layer", layers)
        for block in text:  # the cross-attention's key and value read the image states (no padding)
            cross = block.module.crossattention.self
            memory = {id(cross.key.weight), id(cross.value.weight)}
            block.matrices = [replace(m, stream="memory") if id(m.param) in memory else m for m in block.matrices]
        # UPop's BLIP pruner, which ECoFLaP's BLIP rows run, ranks its ViT per whole matrix
        # (VITLayerWandaPruner), the text decoder per row
        return [Tower("vision", blocks_of("vision_model.encoder.layers", vision.encoder.layers), wanda_group="matrix",
                      root=vision, reads=()),
                Tower("text", text, token_masks=lambda batch: {"hidden": batch["attention_mask"]}, reads=("vision",))]

    def token_ids(self, text: str) -> list[int]:
        """BOS then the text's tokens (BERT's [CLS] becomes the BOS, as BLIP replaces it), then the
        tokenizer's closing token ([SEP]; the byte tokenizer's EOS)."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_text_tokens).input_ids
        if ids and ids[0] == self.tokenizer.cls_token_id:
            return [self.bos, *ids[1:]]
        return [self.bos, *ids][: self.max_text_tokens]

    def prompt_length(self) -> int:
        return 1 + len(self.tokenizer(self.prompt, add_special_tokens=False).input_ids)

    def pixels(self, images: list[Image.Image], augment: bool = False) -> torch.Tensor:
        view = self.train_preprocess if augment else self.preprocess
        return image_batch(images, view, self.model.vision_model.embeddings.patch_embedding.weight)

    def collate(self, samples: list[tuple[Image.Image, str]], augment: bool = False) -> Batch:
        ids = [self.token_ids(self.prompt + blip_caption(caption, self.max_words)) for _, caption in samples]
        width = max(len(t) for t in ids)
        input_ids = torch.tensor([t + [self.pad] * (width - len(t)) for t in ids], device=self.device)
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in ids], device=self.device)
        labels = input_ids.masked_fill(mask == 0, IGNORE)
        labels[:, : self.prompt_length()] = IGNORE
        return {"pixel_values": self.pixels([image for image, _ in samples], augment), "input_ids": input_ids,
                "attention_mask": mask, "labels": labels}

    def forward(self, batch: Batch) -> Any:
        return self.model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"], use_cache=False).logits

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """Token t+1 predicted at position t, caption tokens only, BLIP's label smoothing."""
        logits = self.forward(batch)
        return [LossTerm(logits[:, :-1], batch["labels"][:, 1:], self.label_smoothing)]

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        """Captions: the prompt's tokens ending in [SEP] (which transformers' generate drops), the
        prompt's characters cut from each decoded text."""
        rows = [self.token_ids(prompt) for prompt in prompts]
        width = max(len(r) for r in rows)
        if any(len(r) != width for r in rows):
            raise ValueError("BLIP captioning generates from one prompt per batch")
        ids = torch.tensor(rows, device=self.device)
        out = self.model.generate(pixel_values=self.pixels(images), input_ids=ids, attention_mask=torch.ones_like(ids),
                                  do_sample=False, **generation)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [text[len(prompt):].strip() for text, prompt in zip(texts, prompts, strict=True)]

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        size = self.model.config.vision_config.image_size
        processor = transformers.BlipProcessor(
            image_processor=transformers.BlipImageProcessor(size={"height": size, "width": size},
                                                            image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
            tokenizer=self.tokenizer)
        processor.save_pretrained(path)

