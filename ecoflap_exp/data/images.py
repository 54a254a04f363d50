"""Image classification data in the ImageFolder layout (root/<class>/<image>, classes sorted by
name -> label index), which is ImageNet's train layout and its val layout after the usual
"valprep" into synset folders; plus seeded random images for timing runs with no data."""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.options import Count, Fraction, NonNegativeInt

log = logging.getLogger(__name__)
T = TypeVar("T")
#: the views of calibration images: the model's eval transform, or its training augmentation
Augment = Literal["eval", "train"]
#: threads decoding image files
DECODE_THREADS = 8
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


def decode_images(items: Iterable[tuple[Any, T]], max_bad_fraction: float, count: int | None = None
                  ) -> list[tuple[Image.Image, T]]:
    """The images of (image file or file-like, label or caption) items as RGB, each with its label,
    decoded a few at a time in threads (PIL releases the GIL while decoding); with `count`, the
    first `count` that decode. One policy for every reader: a file that fails to decode is skipped,
    logged and counted, and more than `max_bad_fraction` of the images tried failing is an error,
    decided as soon as it is certain (bad > max_bad_fraction * (count + bad)). Evaluations score
    every image of their split, so they pass 0: the first bad file is the error."""
    decoded: list[tuple[Image.Image, T]] = []
    bad: list[tuple[str, Exception]] = []
    items = iter(items)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        while count is None or len(decoded) < count:
            chunk = list(islice(items, DECODE_THREADS if count is None else min(DECODE_THREADS, count - len(decoded))))
            if not chunk:
                break
            for (source, label), result in zip(chunk, pool.map(decode_or_error, [s for s, _ in chunk]), strict=True):
                if isinstance(result, Exception):
                    bad.append((str(source), result))
                    log.warning("skipping image that fails to decode: %s (%s)", source, result)
                    certain = (len(bad) > max_bad_fraction * (count + len(bad)) if count is not None
                               else max_bad_fraction == 0)
                    if certain:
                        raise too_many_bad(bad, len(decoded) + len(bad), max_bad_fraction)
                else:
                    decoded.append((result, label))
    if bad and len(bad) > max_bad_fraction * (len(decoded) + len(bad)):
        raise too_many_bad(bad, len(decoded) + len(bad), max_bad_fraction)
    if bad:
        log.warning("skipped %d of %d images that fail to decode", len(bad), len(decoded) + len(bad))
    return decoded


def decode_or_error(source: Any) -> Image.Image | Exception:
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        return err


def too_many_bad(bad: list[tuple[str, Exception]], tried: int, max_bad_fraction: float) -> UserError:
    first, err = bad[0]
    return UserError(f"{len(bad)} of {tried} images tried fail to decode (first: {first}: {err}), more than "
                     f"max_bad_fraction={max_bad_fraction}; restore or remove the files, or check the image root and "
                     f"the dataset layout")


class LocalImageCalibration(CalibrationSource):
    """Image files listed with a label or caption each: the first num_samples that decode
    (optionally after a seeded shuffle); undecodable ones are skipped and counted."""

    def __init__(self, num_samples: Count, batch_size: Count, seed: NonNegativeInt, shuffle: bool,
                 max_bad_fraction: Fraction, augment: Augment = "eval"):
        super().__init__(num_samples, batch_size, seed)
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

    def check_data(self, count: int) -> None:
        self.prefetched = self.checked_samples(None, count)  # decoding needs no model

    def samples(self, adapter: ModelAdapter | None, count: int | None = None) -> list[tuple[Image.Image, Any]]:
        return decode_images(self.candidates(), self.max_bad_fraction, count or self.num_samples)


class AnnotatedImageCalibration(LocalImageCalibration):
    """Images listed in one annotation file, their paths starting at `image_root` (default: the
    file's folder)."""

    def __init__(self, annotations: str, num_samples: Count, batch_size: Count, seed: NonNegativeInt, shuffle: bool,
                 max_bad_fraction: Fraction, image_root: str | None, augment: Augment):
        super().__init__(num_samples, batch_size, seed, shuffle, max_bad_fraction, augment)
        self.annotations = annotations
        self.image_root = image_root

    def files(self) -> list[str]:
        return [str(self.annotations)]


class ImageFolderCalibration(LocalImageCalibration):
    kind = "labelled_images"

    def __init__(self, root: str, num_samples: Count = 128, batch_size: Count = 8, seed: NonNegativeInt = 0,
                 shuffle: bool = True, max_bad_fraction: Fraction = 0.05, augment: Augment = "eval"):
        super().__init__(num_samples, batch_size, seed, shuffle, max_bad_fraction, augment)
        self.root = root

    def files(self) -> list[str]:
        return [str(self.root)]

    def items(self) -> list[tuple[Path, int]]:
        return image_folder(self.root)


class SyntheticImageCalibration(CalibrationSource):
    """Seeded uniform-noise images with random labels: for timing runs, never for real results."""

    kind = "labelled_images"

    def __init__(self, image_size: Count, num_classes: Count, num_samples: Count = 128, batch_size: Count = 8,
                 seed: NonNegativeInt = 0):
        super().__init__(num_samples, batch_size, seed)
        self.image_size = image_size
        self.num_classes = num_classes

    def samples(self, adapter: ModelAdapter, count: int | None = None) -> list[tuple[Image.Image, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for _ in range(count or self.num_samples):  # one sample after another: the first do not depend on count
            pixels = torch.randint(0, 256, (self.image_size, self.image_size, 3), generator=generator)
            label = int(torch.randint(0, self.num_classes, (1,), generator=generator))
            out.append((Image.fromarray(pixels.to(torch.uint8).numpy()), label))
        return out
