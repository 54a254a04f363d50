"""Zero-shot classification and image-text retrieval with an image-text model's embeddings.

Zero-shot: each class's text embedding is the normalised mean over `templates` of the normalised
embeddings of template.format(class name) (one template = CoOp's protocol, 80 = open_clip's
ImageNet ensemble); an image's prediction is the class of highest cosine similarity; top-1 in %.
Retrieval (CLIP variant: plain cosine similarity): TR@K = share of images whose K most similar
captions hold one of their own; IR@K = share of captions whose K most similar images hold theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ecoflap_exp.data.captions import read_pairs
from ecoflap_exp.data.images import image_folder, open_images
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.base import ModelAdapter
from ecoflap_exp.progress import track


def load_images(items: list[tuple[Path, object]]) -> list[Image.Image]:
    return [image for image, _ in open_images(items, max_bad_fraction=0.0)]


def embed_images(adapter: ModelAdapter, images: Sequence[Image.Image] | list[tuple[Path, object]],
                 batch_size: int) -> torch.Tensor:
    """Embeddings of images given as PIL images or as (path, anything) items read in batches."""
    chunks = []
    starts = range(0, len(images), batch_size)
    for i in track(starts, "embedding images", total=len(starts)):
        chunk = images[i : i + batch_size]
        chunks.append(adapter.image_features(chunk if isinstance(chunk[0], Image.Image) else load_images(chunk)))
    features = torch.cat(chunks)
    if not torch.isfinite(features).all():
        raise UserError("the model's image embeddings are not finite; the pruned model is broken")
    return features


def class_embeddings(adapter: ModelAdapter, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Per class: the normalised mean of its normalised template embeddings."""
    return torch.stack([F.normalize(adapter.text_features([t.format(c) for t in templates]).mean(0), dim=-1)
                        for c in classnames])


def zero_shot_top1(image_features: torch.Tensor, labels: Sequence[int], classifier: torch.Tensor) -> float:
    predictions = (image_features @ classifier.t()).argmax(1)
    return 100.0 * float((predictions == torch.tensor(list(labels), device=predictions.device)).float().mean())


def retrieval_recalls(adapter: ModelAdapter, image_features: torch.Tensor, captions: Sequence[str],
                      positives: torch.Tensor, ks: Sequence[int], batch_size: int) -> dict[str, float]:
    """TR@k, IR@k and their mean; positives[i, j]: caption j describes image i."""
    text_features = torch.cat([adapter.text_features(list(captions[i : i + batch_size]))
                               for i in range(0, len(captions), batch_size)])
    positives = positives.to(image_features.device)
    similarity = image_features @ text_features.t()
    metrics = {f"tr@{k}": v for k, v in recall_at_k(similarity, positives, tuple(ks)).items()}
    metrics |= {f"ir@{k}": v for k, v in recall_at_k(similarity.t(), positives.t(), tuple(ks)).items()}
    metrics["r_mean"] = sum(metrics.values()) / len(metrics)
    return metrics


class ZeroShotClassification(Evaluation):
    needs = ("image_features", "text_features")

    def __init__(self, root: str, classnames: list[str] | None = None,
                 templates: tuple[str, ...] = ("a photo of a {}.",), batch_size: int = 64, limit: int | None = None):
        self.root = root
        self.classnames = classnames
        self.templates = list(templates)
        self.batch_size = batch_size
        self.limit = limit

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        items = image_folder(self.root)
        folders = sorted({p.parent.name for p, _ in items})
        classnames = self.classnames or [f.replace("_", " ") for f in folders]
        if len(classnames) != len(folders):
            raise UserError(f"{len(classnames)} class names for {len(folders)} class folders in {self.root}")
        items = items[: self.limit]
        features = embed_images(adapter, items, self.batch_size)
        return {"top1": zero_shot_top1(features, [label for _, label in items],
                                       class_embeddings(adapter, classnames, self.templates))}


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """similarity: (queries, candidates); positives: bool, same shape. Share of queries (in %) with
    a positive among their k most similar candidates."""
    order = similarity.argsort(dim=1, descending=True, stable=True)
    hits = positives.gather(1, order)
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(hits[:, 0], 10**9, dtype=torch.long))
    return {k: 100.0 * float((first_hit < k).float().mean()) for k in ks}


class ImageTextRetrieval(Evaluation):
    needs = ("image_features", "text_features")

    def __init__(self, annotations: str, batch_size: int = 64, limit: int | None = None,
                 ks: tuple[int, ...] = (1, 5, 10)):
        self.annotations = annotations
        self.batch_size = batch_size
        self.limit = limit
        self.ks = tuple(ks)

    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        pairs = read_pairs(self.annotations)
        images = sorted({path for path, _ in pairs})[: self.limit]
        index = {path: i for i, path in enumerate(images)}
        captions = [(caption, index[path]) for path, caption in pairs if path in index]
        image_features = embed_images(adapter, [(p, None) for p in images], self.batch_size)
        owner = torch.tensor([i for _, i in captions])
        positives = owner[None, :] == torch.arange(len(images))[:, None]
        return retrieval_recalls(adapter, image_features, [c for c, _ in captions], positives, self.ks,
                                 self.batch_size)
