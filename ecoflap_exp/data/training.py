"""Training splits for fine-tuning: image-caption pairs, one sample per caption, read lazily (an
image is decoded when its batch is drawn), in the released formats:
- Karpathy's dataset_coco.json / dataset_flickr30k.json ({"images": [{"filepath"?, "filename",
  "split", "sentences": [{"raw"}]}]}), the entries whose split is one of `splits` (BLIP's COCO
  training set is train + restval: 113,287 images, 566,747 captions; Flickr30k's train: 29,000
  images, 145,000 captions);
- BLIP's / LAVIS's coco_karpathy_train.json and flickr30k_train.json: a list of {"image",
  "caption"} with the image path relative to the image root;
- a .tsv/.csv with image and caption columns, or a COCO caption file (data.caption_pairs).
Every image file is checked to exist before any training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from PIL import Image
from pydantic import AfterValidator, Field

from ecoflap_exp.data.caption_pairs import read_pairs
from ecoflap_exp.data.images import Augment, decode_or_error
from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Typed, unique

#: the splits of Karpathy's files that fine-tuning may train on: some of them, each once
Splits = Annotated[list[Literal["train", "restval", "val", "test"]], AfterValidator(unique), Field(min_length=1)]


class CaptionPairs(Sequence):
    """(PIL image, caption) samples of a list of (image path, caption), decoded on access."""

    def __init__(self, pairs: list[tuple[Path, str]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:  # type: ignore[override]
        path, caption = self.pairs[index]
        image = decode_or_error(path)
        if isinstance(image, Exception):
            raise UserError(f"training image {path} does not decode ({image}); replace the file or remove its "
                            f"entries from the annotations")
        return image, caption


class ImageCaptionSplit(Typed):
    """`annotations`: one of the formats above; `image_root`: where its image paths start (default:
    its folder); `splits`: the Karpathy splits read; `augment`: `train` gives each image the model's
    training augmentation, `eval` its eval transform."""

    kind = "image_captions"
    option_group = "finetune.train"

    def __init__(self, annotations: str, image_root: str | None = None, splits: Splits = ("train",),
                 augment: Augment = "train"):
        self.annotations, self.image_root, self.splits, self.augment = annotations, image_root, list(splits), augment

    def describe(self) -> str:
        return f"{self.annotations} (splits {', '.join(self.splits)})"

    def pairs(self) -> list[tuple[Path, str]]:
        path = Path(self.annotations).expanduser()
        if not path.is_file():
            raise UserError(f"training split {self.annotations!r} does not exist; give Karpathy's dataset_coco.json "
                            f"or dataset_flickr30k.json (caption_datasets.zip from "
                            f"https://cs.stanford.edu/people/karpathy/deepimagesent/), BLIP's coco_karpathy_train.json "
                            f"/ flickr30k_train.json, or a .tsv of image and caption (set paths.data_root)")
        return read_pairs(str(path), self.image_root, self.splits)

    def samples(self) -> CaptionPairs:
        pairs = self.pairs()
        missing = sorted({str(p) for p, _ in pairs if not p.is_file()})
        if missing:
            raise UserError(f"{len(missing)} training image(s) of {self.annotations} are missing, first {missing[0]}; "
                            f"unpack the images under the image root ({self.image_root or 'the file folder'})")
        return CaptionPairs(pairs)

    def check(self) -> None:
        """UserError now when the annotation file is missing or malformed (images: when read)."""
        self.pairs()
