"""Image-text retrieval sets: images, their captions, and which image each caption describes.

Formats (chosen by the file's content):
- Karpathy's `dataset_flickr30k.json` (also COCO's): {"images": [{"filename", "split",
  "sentences": [{"raw", ...}], ...}]}; the images of one split (Flickr30k test: 1,000 images x 5
  captions) in file order, image files under `image_root` (Flickr30k: the flickr30k-images folder);
- LAVIS's `flickr30k/annotations/test.json`: a JSON list of {"image": "flickr30k-images/<id>.jpg",
  "caption": [5 strings]}, image paths relative to `image_root` (LAVIS: flickr30k/images);
- image-caption pair files (.tsv/.csv with image,caption columns or a COCO caption .json; see
  data/caption_pairs.py): images sorted by path, captions in file order.
Image paths are relative to `image_root`, by default the annotation file's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecoflap_exp.data.caption_pairs import read_pairs
from ecoflap_exp.data.files import read_text
from ecoflap_exp.errors import UserError

FLICKR_HINT = ("Karpathy's dataset_flickr30k.json (cs.stanford.edu/people/karpathy/deepimagesent) or LAVIS's "
               "flickr30k/annotations/test.json, with the Flickr30k images (flickr30k-images/)")


@dataclass
class RetrievalSet:
    images: list[Path]
    captions: list[str]
    image_of: list[int]  # image_of[j]: index of the image caption j describes

    def first_images(self, limit: int | None) -> RetrievalSet:
        """The first `limit` images and their captions (all if limit is None)."""
        if limit is None or limit >= len(self.images):
            return self
        kept = [j for j, i in enumerate(self.image_of) if i < limit]
        return RetrievalSet(self.images[:limit], [self.captions[j] for j in kept], [self.image_of[j] for j in kept])


def read_retrieval_set(annotations: str, image_root: str | None = None, split: str = "test") -> RetrievalSet:
    """A retrieval set from any of the formats above; `split` picks Karpathy images."""
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise UserError(f"retrieval annotation file {annotations!r} does not exist; get {FLICKR_HINT}, or give "
                        f"an image-caption .tsv/.csv/COCO .json")
    data = read_json(path) if path.suffix == ".json" else None
    if isinstance(data, list):
        return read_lavis(path, data, root_of(image_root, path))
    entries = data.get("images") if isinstance(data, dict) else None
    first = entries[0] if isinstance(entries, list) and entries else None
    if isinstance(first, dict) and "sentences" in first:
        return read_karpathy(path, data, root_of(image_root, path), split)
    pairs = read_pairs(str(path), image_root)
    images = sorted({image for image, _ in pairs})
    index = {image: i for i, image in enumerate(images)}
    return RetrievalSet(images, [caption for _, caption in pairs], [index[image] for image, _ in pairs])


def read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


def root_of(image_root: str | None, annotations: Path) -> Path:
    return Path(image_root).expanduser() if image_root is not None else annotations.parent


def read_karpathy(path: Path, data: dict, image_root: Path, split: str) -> RetrievalSet:
    images, captions, image_of = [], [], []
    for n, entry in enumerate(data["images"]):
        try:
            if entry["split"] != split:
                continue
            raws = [sentence["raw"] for sentence in entry["sentences"]]
            filename = entry["filename"]
        except (KeyError, TypeError) as err:
            raise UserError(f"{path}: images[{n}] is not a Karpathy entry (filename, split, sentences[].raw): "
                            f"missing {err}") from err
        if not raws or not all(isinstance(r, str) for r in raws):
            raise UserError(f"{path}: images[{n}] ({filename}) has no caption strings in sentences[].raw")
        captions += raws
        image_of += [len(images)] * len(raws)
        images.append(image_root / filename)
    if not images:
        raise UserError(f"{path}: no image has split {split!r} (Karpathy splits: train, val, test, restval)")
    return RetrievalSet(images, captions, image_of)


def read_lavis(path: Path, data: list, image_root: Path) -> RetrievalSet:
    images, captions, image_of = [], [], []
    for n, entry in enumerate(data):
        caption = entry.get("caption") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(caption, list)
                and caption and all(isinstance(c, str) for c in caption)):
            raise UserError(f"{path}: entry {n} = {str(entry)[:200]} is not {{'image': path, 'caption': [strings]}} "
                            f"(LAVIS's retrieval test.json; its train.json holds one caption per entry and is not "
                            f"a retrieval test set)")
        captions += caption
        image_of += [len(images)] * len(caption)
        images.append(image_root / entry["image"])
    if not images:
        raise UserError(f"{path}: the list holds no entries")
    return RetrievalSet(images, captions, image_of)
