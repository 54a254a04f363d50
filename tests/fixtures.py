"""Tiny fixture files in the real released layouts."""

import json
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


#: conversations in llava_v1_5_mix665k.json's shape: (image path or None for a text-only entry, turns)
LLAVA_ENTRIES = [
    ("coco/train2017/000000033471.jpg", [("human", "What are the colors of the bus in the image?\n<image>"),
                                         ("gpt", "The bus in the image is white and red."),
                                         ("human", "What feature can be seen on the back of the bus?"),
                                         ("gpt", "The back of the bus features an advertisement.")]),
    (None, [("human", "Write a haiku about spring."), ("gpt", "Blossoms drift and fall")]),
    ("gqa/images/2354786.jpg", [("human", "<image>\nIs the sky dark?\nAnswer the question using a single word or "
                                          "phrase."), ("gpt", "Yes")]),
    ("vg/VG_100K/2316.jpg", [("human", "<image>\nProvide a one-sentence caption for the provided image."),
                             ("gpt", "A man riding a wave on top of a surfboard.")]),
    ("textvqa/train_images/011e7e629fb9ae7b.jpg", [("human", "<image>\nwhat is written on the sign?"),
                                                   ("gpt", "stop")]),
]


def write_llava_conversations(root: Path, seed: int = 0) -> Path:
    """llava_v1_5_mix665k.json (LLaVA's format) under `root`, its images in LLaVA's folders beside it."""
    rng = np.random.default_rng(seed)
    entries = []
    for i, (image, turns) in enumerate(LLAVA_ENTRIES):
        entry = {"id": f"{i:09d}", "conversations": [{"from": role, "value": text} for role, text in turns]}
        if image is not None:
            entry["image"] = image
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / image)
        entries.append(entry)
    path = root / "llava_v1_5_mix665k.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path
