"""Zero-shot image classification with an image-text model's embeddings.

Each class's text embedding is the normalised mean over `templates` of the normalised embeddings of
template.format(class name); an image's prediction is the class of highest cosine similarity (a
logit scale would not change the argmax); the metric is plain top-1 accuracy in %, as CoOp's
ZeroshotCLIP (Dassl's evaluator) and ECoFLaP's Table 2 report it on every dataset (not the CLIP
paper's mean per-class accuracy for Aircraft, Pets, Caltech101 and Flowers).

Template sets: `coop` = the dataset's one hand-written CoOp template (ECoFLaP's protocol);
`openai_imagenet` = open_clip's 80 OpenAI ImageNet templates, `simple_imagenet` = its 7 (ensembles,
a different and higher number: say which one a table used); or an explicit list of "{}" strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ecoflap_exp.data.coop import COOP_LAYOUT_URL, dataset_info, read_coop_split
from ecoflap_exp.data.files import check_images_exist
from ecoflap_exp.data.images import decode_images, image_folder
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import ReadsSplit
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import ImageTextEmbeddings
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track

DATA_LAYOUT_FIX = "check the data root and the dataset layout"


def image_batches(images: Sequence[Image.Image] | Sequence[tuple[Path, object]], batch_size: int,
                  description: str) -> Iterator[list[Image.Image]]:
    """Batches of PIL images, from PIL images or from (path, anything) items decoded batch by batch."""
    starts = range(0, len(images), batch_size)
    for i in track(starts, description, total=len(starts)):
        chunk = images[i : i + batch_size]
        yield list(chunk) if isinstance(chunk[0], Image.Image) else [image for image, _ in decode_images(chunk, 0.0)]


def embed_images(adapter: ImageTextEmbeddings, images: Sequence[Image.Image] | Sequence[tuple[Path, object]],
                 batch_size: int) -> torch.Tensor:
    """Embeddings of images given as PIL images or as (path, anything) items read in batches."""
    features = torch.cat([adapter.image_features(batch)
                          for batch in image_batches(images, batch_size, "embedding images")])
    if not torch.isfinite(features).all():
        raise UserError("the model's image embeddings are not finite; the pruned model is broken")
    return features


def class_embeddings(adapter: ImageTextEmbeddings, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """Per class: the normalised mean of its normalised template embeddings."""
    prompts = [template.format(name) for name in classnames for template in templates]
    starts = range(0, len(prompts), batch_size)
    features = torch.cat([adapter.text_features(prompts[i : i + batch_size])
                          for i in track(starts, "embedding class prompts", total=len(starts))])
    if not torch.isfinite(features).all():
        raise UserError("the model's text embeddings are not finite; the pruned model is broken")
    return F.normalize(features.view(len(classnames), len(templates), -1).mean(1), dim=-1)


def zero_shot_top1(image_features: torch.Tensor, labels: Sequence[int], classifier: torch.Tensor) -> float:
    predictions = (image_features @ classifier.t()).argmax(1)
    return 100.0 * float((predictions == torch.tensor(list(labels), device=predictions.device)).float().mean())


def template_set(templates: str | Sequence[str], coop_template: str | None = None) -> list[str]:
    """A named template set (coop, openai_imagenet, simple_imagenet) or an explicit list."""
    if not isinstance(templates, str):
        chosen = list(templates)
    elif templates == "coop" and coop_template is not None:
        chosen = [coop_template]
    elif templates in ("openai_imagenet", "simple_imagenet"):
        from open_clip import zero_shot_metadata

        chosen = [t("{}") for t in getattr(zero_shot_metadata, f"{templates.upper()}_TEMPLATES")]
    else:
        names = "coop, openai_imagenet, simple_imagenet" if coop_template else "openai_imagenet, simple_imagenet"
        raise UserError(f"templates={templates!r} is unknown; use {names} or a list of strings with one '{{}}'")
    if not chosen or not all(isinstance(t, str) and t.count("{}") == 1 for t in chosen):
        raise UserError(f"templates {chosen!r}: each must be a string with exactly one '{{}}' for the class name")
    return chosen


class CoOpZeroShot(ReadsSplit):
    """Zero-shot top-1 (%) on one of CoOp's 11 datasets (data/coop.py layouts), CoOp's ZeroshotCLIP
    protocol by default (one template per dataset; test split; ImageNet test = val). Its metrics are
    named by the dataset (`dtd/top1`), whatever the suite entry, so a table's columns are datasets."""

    needs = (ImageTextEmbeddings,)

    def __init__(self, dataset: str, root: str, split: str = "test", templates: str | Sequence[str] = "coop",
                 batch_size: Count = 100, limit: Count | None = None, imagenet_val: str | None = None,
                 imagenet_val_labels: str | None = None):
        self.name = dataset
        self.dataset = dataset
        self.root = root
        self.split = split
        self.templates = template_set(templates, dataset_info(dataset).template)
        self.batch_size = batch_size
        self.limit = limit
        self.imagenet_val = imagenet_val
        self.imagenet_val_labels = imagenet_val_labels

    def read(self) -> tuple[list[tuple[Path, int]], list[str]]:
        """The evaluated images (the first `limit`, checked to exist) with labels, and the class names."""
        split = read_coop_split(self.dataset, self.root, self.split, self.imagenet_val, self.imagenet_val_labels)
        items = split.items[: self.limit]
        if not items:
            raise UserError(f"CoOp dataset {self.dataset!r} has no {self.split} images ({COOP_LAYOUT_URL})")
        check_images_exist([path for path, _ in items], f"images of CoOp dataset {self.dataset!r} ({self.split})",
                           DATA_LAYOUT_FIX)
        return items, split.classnames


    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        items, classnames = self.evaluated
        features = embed_images(adapter, items, self.batch_size)
        classifier = class_embeddings(adapter, classnames, self.templates, self.batch_size)
        return {"top1": zero_shot_top1(features, [label for _, label in items], classifier)}


class ZeroShotClassification(ReadsSplit):
    """Zero-shot top-1 (%) on an ImageFolder split; class names = folder names with "_" as spaces
    unless given."""

    needs = (ImageTextEmbeddings,)

    def __init__(self, root: str, classnames: list[str] | None = None,
                 templates: str | Sequence[str] = ("a photo of a {}.",), batch_size: Count = 64,
                 limit: Count | None = None):
        self.root = root
        self.classnames = classnames
        self.templates = template_set(templates)
        self.batch_size = batch_size
        self.limit = limit

    def read(self) -> tuple[list[tuple[Path, int]], list[str]]:
        """The evaluated images (the first `limit`) with labels, and the class names."""
        items = image_folder(self.root)
        folders = sorted({p.parent.name for p, _ in items})
        classnames = self.classnames or [f.replace("_", " ") for f in folders]
        if len(classnames) != len(folders):
            raise UserError(f"{len(classnames)} class names for {len(folders)} class folders in {self.root}")
        return items[: self.limit], classnames


    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        items, classnames = self.evaluated
        features = embed_images(adapter, items, self.batch_size)
        return {"top1": zero_shot_top1(features, [label for _, label in items],
                                       class_embeddings(adapter, classnames, self.templates, self.batch_size))}
