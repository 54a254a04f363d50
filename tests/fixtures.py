"""Tiny fixture files in the real released layouts."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """root/<class>/<n>.png with random RGB images: the ImageFolder (ImageNet) layout."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root
