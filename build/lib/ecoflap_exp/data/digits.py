"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, UCI) as a tiny image-text
dataset: a fixed seeded train/test split and captions from a few templates. It powers the
embedded default experiment: a real trained CLIP-style model, pruned and evaluated offline."""

from __future__ import annotations

import random
from functools import cache

import numpy as np
from PIL import Image

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.models.adapter import ModelAdapter

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a photo of the digit {}", "handwritten {}", "the number {}", "a scan of a handwritten {}")
TEST_SIZE = 360
SPLIT_SEED = 0


def captions_of(label: int) -> list[str]:
    """Every caption of a class: each template with the word and with the numeral."""
    return [t.format(word) for t in TEMPLATES for word in (CLASS_NAMES[label], str(label))]


@cache
def digits_split() -> dict[str, tuple[tuple[Image.Image, ...], tuple[int, ...]]]:
    """{"train": (images, labels), "test": (images, labels)}; always the same split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data.target))
    images = [Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8)) for i in order]
    labels = [int(data.target[i]) for i in order]
    return {"test": (tuple(images[:TEST_SIZE]), tuple(labels[:TEST_SIZE])),
            "train": (tuple(images[TEST_SIZE:]), tuple(labels[TEST_SIZE:]))}


class DigitsCalibration(CalibrationSource):
    """Train-split images, each with a seeded random caption of its class."""

    kind = "image_captions"

    def available(self) -> int:
        return len(digits_split()["train"][0])

    def samples(self, adapter: ModelAdapter, count: int | None = None) -> list[tuple[Image.Image, str]]:
        images, labels = digits_split()["train"]
        rng = random.Random(self.seed)
        picked = rng.sample(range(len(images)), self.num_samples)
        pairs = [(images[i], rng.choice(captions_of(labels[i]))) for i in picked]
        if count is not None and count > self.num_samples:  # more, drawn after (the first stay the same)
            extra = random.Random(self.seed + 1)
            taken = set(picked)
            rest = extra.sample([i for i in range(len(images)) if i not in taken], count - self.num_samples)
            pairs += [(images[i], extra.choice(captions_of(labels[i]))) for i in rest]
        return pairs[: count or self.num_samples]
