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


CAPTIONS = ["a photo of a cat", "a red car on a road", "two dogs playing", "a plate of food",
            "a mountain lake", "an old building", "a person running", "a bowl of fruit"]


def write_caption_pairs(root: Path, count: int = 8, seed: int = 0, numbered: bool = False) -> dict[str, Path]:
    """The same pairs as root/pairs.tsv, root/pairs.csv and root/captions.json (COCO style);
    `numbered`: each caption ends in its index, so no two are the same."""
    import csv
    import json

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"images/{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name)
        caption = CAPTIONS[i % len(CAPTIONS)]
        rows.append({"image": name, "caption": f"{caption} number {i}" if numbered else caption})
    for suffix, delimiter in ((".tsv", "\t"), (".csv", ",")):
        with (root / f"pairs{suffix}").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "caption"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    coco = {"images": [{"id": i, "file_name": r["image"]} for i, r in enumerate(rows)],
            "annotations": [{"id": 100 + i, "image_id": i, "caption": r["caption"]} for i, r in enumerate(rows)]}
    (root / "captions.json").write_text(json.dumps(coco))
    return {"tsv": root / "pairs.tsv", "csv": root / "pairs.csv", "json": root / "captions.json"}
