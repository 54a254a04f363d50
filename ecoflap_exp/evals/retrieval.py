"""Image-text retrieval (Flickr30k 1k test and other caption sets): TR@K and IR@K.

Metric (LAVIS retrieval task): TR@K (image -> text) = % of images with one of their own captions
among their K best-scored texts; IR@K (text -> image) = % of captions whose image is among their K
best-scored images; tr_mean / ir_mean = mean over K, r_mean = mean of the two. Ties keep the lower
index first.

Protocols:
- `clip`: score = cosine similarity of `image_features` and `text_features` (for models with
  per-query features, the maximum over queries);
- `itm` (BLIP-2, LAVIS compute_sim_matrix): ITC similarity = max over the Q-Former queries of
  `features_from_states(image_states)` @ `text_features` (no temperature); then each image's
  top-`k_test` texts (LAVIS: 128) and each text's top-`k_test` images are re-scored with
  score = ITM logit (`itm_scores`, raw logit of the "match" class) + ITC similarity; every other
  entry is -100. The vision encoder runs once per image and its states are kept (on the model's
  device: images x tokens x width numbers); a pair in both top-k lists is scored once; ITM calls
  take `itm_batch_size` pairs;
- `auto`: `itm` when the model has `itm_scores`, else `clip`.
Captions can go through LAVIS's `blip_caption` processor first (BLIP-2's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ecoflap_exp.data.files import check_images_exist
from ecoflap_exp.data.flickr import RetrievalSet, read_retrieval_set
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import ReadsSplit
from ecoflap_exp.evals.zero_shot import DATA_LAYOUT_FIX, embed_images, image_batches
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.blip_text import blip_caption
from ecoflap_exp.models.capabilities import ImageTextEmbeddings, ImageTextMatching
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track

NEEDS = {"clip": (ImageTextEmbeddings,), "itm": (ImageTextMatching,), "auto": (ImageTextEmbeddings,)}
OUTSIDE_TOP_K = -100.0


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """similarity: (queries, candidates); positives: bool, same shape. Share of queries (in %) with
    a positive among their k most similar candidates."""
    order = similarity.argsort(dim=1, descending=True, stable=True)
    hits = positives.gather(1, order)
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(hits[:, 0], 10**9, dtype=torch.long))
    return {k: 100.0 * float((first_hit < k).float().mean()) for k in ks}


def recall_metrics(image_to_text: torch.Tensor, text_to_image: torch.Tensor, positives: torch.Tensor,
                   ks: Sequence[int]) -> dict[str, float]:
    """TR@k, IR@k, tr_mean, ir_mean and r_mean from score matrices (images x texts, texts x images);
    positives[i, j]: text j describes image i."""
    positives = positives.to(image_to_text.device)
    tr = recall_at_k(image_to_text, positives, tuple(ks))
    ir = recall_at_k(text_to_image, positives.t(), tuple(ks))
    metrics = {f"tr@{k}": v for k, v in tr.items()} | {f"ir@{k}": v for k, v in ir.items()}
    metrics["tr_mean"] = sum(tr.values()) / len(tr)
    metrics["ir_mean"] = sum(ir.values()) / len(ir)
    metrics["r_mean"] = (metrics["tr_mean"] + metrics["ir_mean"]) / 2
    return metrics


def embed_texts(adapter: ImageTextEmbeddings | ImageTextMatching, texts: Sequence[str],
                batch_size: int) -> torch.Tensor:
    starts = range(0, len(texts), batch_size)
    features = torch.cat([adapter.text_features(list(texts[i : i + batch_size]))
                          for i in track(starts, "embedding texts", total=len(starts))])
    if not torch.isfinite(features).all():
        raise UserError("the model's text embeddings are not finite; the pruned model is broken")
    return features


def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(images, texts) dot products; per-query image features (images, Q, D) take the max over Q."""
    image_features, text_features = image_features.float(), text_features.float().to(image_features.device)
    if image_features.dim() == 3:
        return torch.einsum("iqd,td->iqt", image_features, text_features).amax(dim=1)
    return image_features @ text_features.t()


def retrieval_recalls(adapter: ImageTextEmbeddings, image_features: torch.Tensor, captions: Sequence[str],
                      positives: torch.Tensor, ks: Sequence[int], batch_size: int) -> dict[str, float]:
    """The CLIP protocol on precomputed image features: recall metrics of plain cosine similarity."""
    scores = similarity(image_features, embed_texts(adapter, captions, batch_size))
    return recall_metrics(scores, scores.t(), positives, ks)


def itm_rerank(adapter: ImageTextMatching, states: torch.Tensor, texts: Sequence[str], itc: torch.Tensor, k_test: int,
               itm_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LAVIS's re-rank: (images x texts, texts x images) score matrices, ITM logit + ITC similarity
    on each query's top-k candidates by ITC and -100 elsewhere."""
    n_images, n_texts = itc.shape
    by_image = itc.topk(min(k_test, n_texts), dim=1)
    by_text = itc.t().topk(min(k_test, n_images), dim=1)
    image_index = torch.cat([torch.arange(n_images, device=itc.device).repeat_interleave(by_image.indices.shape[1]),
                             by_text.indices.flatten()])
    text_index = torch.cat([by_image.indices.flatten(),
                            torch.arange(n_texts, device=itc.device).repeat_interleave(by_text.indices.shape[1])])
    pairs, where = torch.unique(image_index * n_texts + text_index, return_inverse=True)
    scores = itm_pairs(adapter, states, texts, pairs // n_texts, pairs % n_texts, itm_batch_size)[where]
    split = by_image.indices.numel()
    image_to_text = torch.full_like(itc, OUTSIDE_TOP_K)
    image_to_text.scatter_(1, by_image.indices, scores[:split].view_as(by_image.values) + by_image.values)
    text_to_image = torch.full_like(itc.t(), OUTSIDE_TOP_K)
    text_to_image.scatter_(1, by_text.indices, scores[split:].view_as(by_text.values) + by_text.values)
    return image_to_text, text_to_image


def itm_pairs(adapter: ImageTextMatching, states: torch.Tensor, texts: Sequence[str], image_index: torch.Tensor,
              text_index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ITM logits of the pairs (image_index[p], text_index[p]), `batch_size` pairs per call."""
    starts = range(0, len(image_index), batch_size)
    scores = []
    for i in track(starts, "ITM re-rank", total=len(starts)):
        images = image_index[i : i + batch_size]
        scores.append(adapter.itm_scores(states[images.to(states.device)],
                                         [texts[j] for j in text_index[i : i + batch_size].tolist()]).float())
    result = torch.cat(scores).to(image_index.device) if scores else torch.zeros(0, device=image_index.device)
    if not torch.isfinite(result).all():
        raise UserError("the model's ITM scores are not finite; the pruned model is broken")
    return result


class ImageTextRetrieval(ReadsSplit):
    """TR/IR@K on a retrieval set (data/flickr.py formats) with the `clip`, `itm` or `auto` protocol."""

    def __init__(self, annotations: str, image_root: str | None = None, split: str = "test", protocol: str = "clip",
                 caption_processor: str | None = None, k_test: Count = 128, batch_size: Count = 64,
                 itm_batch_size: Count = 128, limit: Count | None = None, ks: Sequence[int] = (1, 5, 10)):
        if protocol not in NEEDS:
            raise UserError(f"protocol={protocol!r} is unknown; use one of {', '.join(NEEDS)}")
        if caption_processor not in (None, "blip_caption"):
            raise UserError(f"caption_processor={caption_processor!r} is unknown; use null or blip_caption")
        self.annotations = annotations
        self.image_root = image_root
        self.split = split
        self.protocol = protocol
        self.caption_processor = caption_processor
        self.k_test = k_test
        self.batch_size = batch_size
        self.itm_batch_size = itm_batch_size
        self.limit = limit
        self.ks = tuple(ks)
        self.needs = NEEDS[protocol]

    def captions(self, data: RetrievalSet) -> list[str]:
        if self.caption_processor == "blip_caption":
            return [blip_caption(c) for c in data.captions]
        return list(data.captions)

    def read(self) -> RetrievalSet:
        """The evaluated images (the first `limit`, checked to exist) and their captions."""
        data = read_retrieval_set(self.annotations, self.image_root, self.split).first_images(self.limit)
        check_images_exist(data.images, f"images of retrieval set {self.annotations}", DATA_LAYOUT_FIX)
        return data


    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        data = self.evaluated
        captions = self.captions(data)
        positives = torch.tensor(data.image_of)[None, :] == torch.arange(len(data.images))[:, None]
        items = [(p, None) for p in data.images]
        protocol = self.protocol
        if protocol == "auto":
            protocol = "itm" if isinstance(adapter, ImageTextMatching) else "clip"
        if protocol == "clip":
            return retrieval_recalls(adapter, embed_images(adapter, items, self.batch_size), captions, positives,
                                     self.ks, self.batch_size)
        text_features = embed_texts(adapter, captions, self.batch_size)
        states, itc = [], []
        for batch in image_batches(items, self.batch_size, "image states and ITC"):
            states.append(adapter.image_states(batch))
            itc.append(similarity(adapter.features_from_states(states[-1]), text_features))
        itc_scores = torch.cat(itc)
        if not torch.isfinite(itc_scores).all():
            raise UserError("the model's ITC similarities are not finite; the pruned model is broken")
        image_to_text, text_to_image = itm_rerank(adapter, torch.cat(states), captions, itc_scores, self.k_test,
                                                  self.itm_batch_size)
        return recall_metrics(image_to_text, text_to_image, positives, self.ks)
