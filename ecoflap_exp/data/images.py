"""Image classification data in the ImageFolder layout (root/<class>/<image>, classes sorted by
name -> label index), which is ImageNet's train layout and its val layout after the usual
"valprep" into synset folders; plus seeded random images for timing runs with no data."""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter

log = logging.getLogger(__name__)
T = TypeVar("T")
#: the views of calibration images: the model's eval transform, or its training augmentation
AUGMENTS = ("eval", "train")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}


def image_folder(root: str) -> list[tuple[Path, int]]:
    """(path, label) of every image under root/<class>/, sorted by class then file name."""
    base = Path(root).expanduser()
    classes = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    items = [(f, label) for label, name in enumerate(classes)
             for f in sorted((base / name).iterdir()) if f.suffix in IMAGE_SUFFIXES]
    if not items:
        raise UserError(f"image folder {root!r} is missing or holds no images; expected the ImageFolder layout "
                        f"{root}/<class name>/<image>.jpg (set paths.data_root or the config's root)")
    return items


def open_images(items: list[tuple[Path, T]], max_bad_fraction: float) -> list[tuple[Image.Image, T]]:
    """Decode images, keeping each one's label or caption; files that fail to decode are skipped
    and counted, and too many failures is an error."""
    images, bad = [], []
    for path, label in items:
        try:
            with Image.open(path) as image:
                images.append((image.convert("RGB"), label))
        except (UnidentifiedImageError, OSError) as err:
            bad.append(path)
            log.warning("skipping image that fails to decode: %s (%s)", path, err)
    if bad and len(bad) > max_bad_fraction * len(items):
        raise UserError(f"{len(bad)} of {len(items)} images fail to decode (first: {bad[0]}), more than "
                        f"max_bad_fraction={max_bad_fraction}; fix or remove them")
    if bad:
        log.warning("skipped %d of %d images that fail to decode", len(bad), len(items))
    return images


def too_many_bad(bad: list[str], tried: int, max_bad_fraction: float) -> UserError:
    return UserError(f"{len(bad)} of {tried} images tried fail to decode (first: {bad[0]}), more than "
                     f"max_bad_fraction={max_bad_fraction}; check the image root and fix or remove the files")


def decode_first(pairs: Iterable[tuple[Any, T]], count: int, max_bad_fraction: float) -> list[tuple[Image.Image, T]]:
    """The first `count` pairs (image file or file-like, label or caption) whose image decodes;
    the others are skipped, logged and counted. Failing is decided as soon as it is certain:
    bad > max_bad_fraction * (count + bad)."""
    decoded: list[tuple[Image.Image, T]] = []
    bad: list[str] = []
    for source, caption in pairs:
        try:
            with Image.open(source) as image:
                decoded.append((image.convert("RGB"), caption))
        except (UnidentifiedImageError, OSError) as err:
            bad.append(str(source))
            log.warning("skipping image that fails to decode: %s (%s)", source, err)
            if len(bad) > max_bad_fraction * (count + len(bad)):
                raise too_many_bad(bad, len(decoded) + len(bad), max_bad_fraction) from err
        if len(decoded) == count:
            break
    if bad and len(bad) > max_bad_fraction * (len(decoded) + len(bad)):
        raise too_many_bad(bad, len(decoded) + len(bad), max_bad_fraction)
    if bad:
        log.warning("skipped %d of %d images that fail to decode", len(bad), len(decoded) + len(bad))
    return decoded


class LocalImageCalibration(CalibrationSource):
    """Image files listed with a label or caption each: the first num_samples that decode
    (optionally after a seeded shuffle); undecodable ones are skipped and counted."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, shuffle: bool, max_bad_fraction: float,
                 augment: str = "eval"):
        super().__init__(num_samples, batch_size, seed)
        if augment not in AUGMENTS:
            raise UserError(f"calib.augment={augment!r} is unknown; use one of {', '.join(AUGMENTS)}")
        self.shuffle = shuffle
        self.max_bad_fraction = max_bad_fraction
        self.augment = augment

    @abstractmethod
    def items(self) -> list[tuple[Path, Any]]:
        """(image path, label or caption) of every available sample."""

    def candidates(self) -> Iterable[tuple[Any, Any]]:
        """The samples in the order they are taken: the items, after a seeded shuffle if asked."""
        items = self.items()
        if self.shuffle:
            random.Random(self.seed).shuffle(items)
        return items

    def samples(self, adapter: ModelAdapter) -> list[tuple[Image.Image, Any]]:
        return decode_first(self.candidates(), self.num_samples, self.max_bad_fraction)


class ImageFolderCalibration(LocalImageCalibration):
    kind = "labelled_images"

    def __init__(self, root: str, num_samples: int = 128, batch_size: int = 8, seed: int = 0, shuffle: bool = True,
                 max_bad_fraction: float = 0.05, augment: str = "eval"):
        super().__init__(num_samples, batch_size, seed, shuffle, max_bad_fraction, augment)
        self.root = root

    def items(self) -> list[tuple[Path, int]]:
        return image_folder(self.root)


class SyntheticImageCalibration(CalibrationSource):
    """Seeded uniform-noise images with random labels: for timing runs, never for real results."""

    kind = "labelled_images"

    def __init__(self, image_size: int, num_classes: int, num_samples: int = 128, batch_size: int = 8, seed: int = 0):
        super().__init__(num_samples, batch_size, seed)
        self.image_size = image_size
        self.num_classes = num_classes

    def samples(self, adapter: ModelAdapter) -> list[tuple[Image.Image, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        pixels = torch.randint(0, 256, (self.num_samples, self.image_size, self.image_size, 3), generator=generator)
        labels = torch.randint(0, self.num_classes, (self.num_samples,), generator=generator)
        return [(Image.fromarray(p.to(torch.uint8).numpy()), int(y)) for p, y in zip(pixels, labels, strict=True)]
