"""CLIP through transformers' CLIPModel: separate q/k/v/out Linear layers, so every prunable
matrix is an nn.Linear; the same towers (vision, then text) and loss as the open_clip adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torchvision import transforms

from ecoflap_exp.models.adapter import LossTerm, TransformersAdapter, contrastive_terms
from ecoflap_exp.models.loading import CLIP_MEAN, CLIP_STD, DType, hub_load_error, resolve_checkpoint
from ecoflap_exp.models.seam import Batch, Tower, blocks_of


class HFCLIPAdapter(TransformersAdapter):
    """`tokenizer`: the checkpoint's CLIPTokenizer, or `open_clip` (the same BPE, bundled with
    open_clip, so random-init models need no files). Towers: vision, text (`prune_towers` picks some)."""

    sample_kinds = ("image_captions",)

    builtin_tokenizers = ("open_clip",)

    def __init__(self, dtype: DType = "float32", tokenizer: str | None = None, **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.AutoModel, dtype)
        vision = self.model.config.vision_config
        self.context_length = self.model.config.text_config.max_position_embeddings
        self.preprocess = transforms.Compose([
            transforms.Resize(vision.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(vision.image_size),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ])
        self.tokenize_captions = self._tokenizer(tokenizer or self.checkpoint)

    def _tokenizer(self, name: str | None) -> Any:
        self.hf_tokenizer = None
        if name == "open_clip":
            import open_clip

            simple = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
            return lambda captions: simple(captions)
        try:
            hf = transformers.CLIPTokenizer.from_pretrained(resolve_checkpoint(str(name)))
        except OSError as err:
            raise hub_load_error(str(name), err) from err
        self.hf_tokenizer = hf
        return lambda captions: hf(captions, padding="max_length", truncation=True, max_length=self.context_length,
                                   return_tensors="pt").input_ids

    def all_towers(self) -> list[Tower]:
        return [Tower(name, blocks_of(f"{root}.encoder.layers", self.model.get_submodule(f"{root}.encoder.layers")),
                      root=self.model.get_submodule(root), reads=())  # the towers meet only in the loss
                for name, root in (("vision", "vision_model"), ("text", "text_model"))]

    def collate(self, samples: list[tuple[Image.Image, str]]) -> Batch:
        dtype = next(self.model.parameters()).dtype
        images = torch.stack([self.preprocess(image.convert("RGB")) for image, _ in samples])
        ids = self.tokenize_captions([caption for _, caption in samples])
        return {"pixel_values": images.to(self.device, dtype), "input_ids": ids.to(self.device)}

    def forward(self, batch: Batch) -> Any:
        return self.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        return contrastive_terms(self.forward(batch).logits_per_image)

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device, dtype)
        features = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenize_captions(texts).to(self.device)
        features = self.model.text_projection(self.model.text_model(input_ids=ids).pooler_output)
        return F.normalize(features.float(), dim=-1)

    load_hint = ("transformers.CLIPModel.from_pretrained({path!r}); "
                 "transformers.AutoProcessor.from_pretrained({path!r})")

    def save(self, path: Path) -> None:
        """The model and its processor: a CLIPProcessor with the checkpoint's tokenizer, or only the
        CLIPImageProcessor when the captions were tokenized by open_clip (the same BPE, not a
        transformers tokenizer)."""
        self.model.save_pretrained(path)
        size = self.model.config.vision_config.image_size
        images = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                 crop_size={"height": size, "width": size},
                                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
        if self.hf_tokenizer is not None:
            transformers.CLIPProcessor(image_processor=images, tokenizer=self.hf_tokenizer).save_pretrained(path)
        else:
            images.save_pretrained(path)
