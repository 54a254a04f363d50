"""Vision transformers for image classification: transformers' ViTForImageClassification and timm's
VisionTransformer. One tower ("vision"); calibration loss = cross-entropy of the class logits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import LossTerm, ModelAdapter, TransformersAdapter
from ecoflap_exp.models.loading import DType, hub_load_error, resolve_checkpoint, torch_dtype
from ecoflap_exp.models.seam import Batch, Tower, blocks_of, find_block_list
from ecoflap_exp.options import Count


class ImageClassifierAdapter(ModelAdapter):
    """Shared by both backends: the options of the weights' dtype and of the eval view (resize to
    `resize_size` or the image size, centre crop, normalise), batches of (image, label), loss, logits."""

    sample_kinds = ("labelled_images",)

    def __init__(self, dtype: DType = "float32", image_size: Count = 224, resize_size: Count | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5), **common: Any):
        super().__init__(**common)
        self.dtype = dtype
        self.use_view(image_size, resize_size, mean, std)

    def use_view(self, image_size: int, resize_size: int | None, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.mean, self.std = image_size, list(mean), list(std)
        self.preprocess = transforms.Compose([
            transforms.Resize(resize_size or image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(list(mean), list(std)),
        ])

    def all_towers(self) -> list[Tower]:
        """One tower; Wanda compares whole matrices, as ECoFLaP's ViT pruner (vit_wanda_pruner) does."""
        path, layers = find_block_list(self.model)
        return [Tower("vision", blocks_of(path, layers), wanda_group="matrix")]

    def collate(self, samples: list[tuple[Image.Image, int]]) -> Batch:
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image, _ in samples])
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        return {"pixel_values": pixels.to(self.device, dtype), "labels": labels.to(self.device)}

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        return [LossTerm(self.logits(batch), batch["labels"])]

    def forward(self, batch: Batch) -> Any:
        return self.logits(batch)


class HFViTAdapter(ImageClassifierAdapter, TransformersAdapter):
    def __init__(self, **common: Any):
        super().__init__(**common)
        self.model = self.load_model(transformers.AutoModelForImageClassification, self.dtype)

    @classmethod
    def wraps(cls, model: nn.Module) -> bool:
        return type(model).__name__ == "ViTForImageClassification"

    @classmethod
    def wrapping(cls, model: nn.Module, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                 std: tuple[float, ...] = (0.5, 0.5, 0.5), name: str = "") -> HFViTAdapter:
        adapter = cls.__new__(cls)
        adapter.use_view(model.config.image_size, None, mean, std)
        adapter.name = name or type(model).__name__
        adapter.model = model.eval()
        return adapter

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(pixel_values=batch["pixel_values"]).logits

    load_hint = ("transformers.ViTForImageClassification.from_pretrained({path!r}); "
                 "transformers.ViTImageProcessor.from_pretrained({path!r})")

    def save(self, path: Path) -> None:
        """The model and the ViTImageProcessor of its transform."""
        self.model.save_pretrained(path)
        transformers.ViTImageProcessor(size={"height": self.image_size, "width": self.image_size},
                                       image_mean=self.mean, image_std=self.std).save_pretrained(path)


class TimmViTAdapter(ImageClassifierAdapter):
    """timm.create_model(model_name, **model_kwargs); `checkpoint` is a local state dict
    (.safetensors or .pth), or `timm` for timm's own pretrained weights from the hub."""

    def __init__(self, model_name: str, model_kwargs: dict[str, Any] | None = None, **common: Any):
        import timm

        super().__init__(**common)
        self.construction = {"model_name": model_name, "model_kwargs": dict(model_kwargs or {})}
        torch.manual_seed(self.seed)
        from_hub = self.init == "pretrained" and self.checkpoint == "timm"
        try:
            self.model = timm.create_model(model_name, pretrained=from_hub, **self.construction["model_kwargs"])
        except (OSError, RuntimeError) as err:
            raise hub_load_error(model_name, err) from err
        if self.init == "pretrained" and not from_hub:
            if self.checkpoint is None:
                raise UserError("model.init=pretrained needs model.checkpoint (a state-dict file, or 'timm')")
            path = Path(resolve_checkpoint(self.checkpoint))
            state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
            self.model.load_state_dict(state)
        self.model.to(torch_dtype(self.dtype)).eval()

    @classmethod
    def wraps(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("timm.") and type(model).__name__ == "VisionTransformer"

    @classmethod
    def wrapping(cls, model: nn.Module, name: str = "") -> TimmViTAdapter:
        """Preprocessing from the model's patch embedding (input size) and pretrained_cfg (crop,
        mean, std)."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        size = int(model.patch_embed.img_size[-1])
        adapter = cls.__new__(cls)
        adapter.use_view(size, round(size / cfg.get("crop_pct", 1.0)), cfg.get("mean", (0.5, 0.5, 0.5)),
                         cfg.get("std", (0.5, 0.5, 0.5)))
        adapter.name = name or cfg.get("architecture") or type(model).__name__
        adapter.model = model.eval()
        adapter.construction = {"model_name": cfg.get("architecture"), "model_kwargs": {}}
        return adapter

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(batch["pixel_values"])

    load_hint = "timm.create_model('local-dir:' + {path!r}, pretrained=True)"

    def save(self, path: Path) -> None:
        """timm's own Hugging Face layout (config.json with the architecture, its arguments and the
        preprocessing; model.safetensors): `timm.create_model("local-dir:<path>", pretrained=True)`."""
        from timm.models import save_for_hf

        data = {"input_size": [3, self.image_size, self.image_size], "mean": self.mean, "std": self.std}
        save_for_hf(self.model, str(path), model_args=self.construction.get("model_kwargs") or None,
                    safe_serialization=True, data_config=data)
