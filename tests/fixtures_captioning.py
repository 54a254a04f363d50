"""Tiny captioning fixtures in the released formats: NoCaps val (official captions file and LAVIS's
image list) and COCO Karpathy test (Karpathy's dataset_coco.json and LAVIS's
coco_karpathy_test.json). Image k has width 20 + k, so a stub captioner can tell the images apart
after JPEG decoding."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: (open_images_id, domain, references) of the NoCaps fixture images, two per domain
NOCAPS = [
    ("0013ea2087020901", "in-domain", ["A baby is sitting in a high chair.", "a small child eating at a table",
                                       "A baby in a chair with food."]),
    ("00223ef5b3e3f8f8", "in-domain", ["A dog runs on the grass.", "a brown dog running in a park",
                                       "A dog playing on green grass."]),
    ("0041a6c2a2f4e0c5", "near-domain", ["A red fire truck on a street.", "a fire engine parked by the road",
                                         "A big red truck in the city."]),
    ("005b8d3ad2cfb5f1", "near-domain", ["A woman holding a violin.", "a person playing a violin on stage",
                                         "A musician with a violin and a bow."]),
    ("0076fb2a1a6f6bf8", "out-domain", ["A jellyfish floating in blue water.", "a pink jellyfish in the ocean",
                                        "A jellyfish swimming in the sea."]),
    ("0092c3d3b2b8c1a4", "out-domain", ["A tortoise walking on sand.", "a large tortoise in a zoo",
                                        "A slow tortoise on the ground."]),
]

#: what the stub captioner says for image k (width 20 + k)
NOCAPS_PREDICTIONS = ["a baby sitting in a chair at a table", "a dog running on the grass",
                      "a red truck parked on a street", "a woman playing a violin",
                      "a jellyfish in the water", "a turtle walking on the sand"]

#: (COCO id, split, references) of the Karpathy fixture images
COCO = [
    (391895, "test", ["A man with a red helmet on a small moped on a dirt road.",
                      "Man riding a motor bike on a dirt road on the countryside."]),
    (522418, "test", ["A woman wearing a net on her head cutting a cake.",
                      "A woman cutting a large white sheet cake."]),
    (184613, "train", ["A child holding a flowered umbrella and petting a yak.",
                       "A young man holding an umbrella next to a herd of cattle."]),
    (318219, "test", ["A young boy standing in front of a computer keyboard.",
                      "a little boy wearing headphones and looking at a computer monitor"]),
    (554625, "val", ["a boy wearing headphones using one computer in a long row of computers",
                     "A little boy with earphones on listening to something."]),
]

COCO_PREDICTIONS = {391895: "a man riding a motorcycle on a dirt road", 522418: "a woman cutting a cake",
                    318219: "a boy looking at a computer"}


def save_image(path: Path, width: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, width, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_nocaps(root: Path) -> dict[str, Path]:
    """root/nocaps/nocaps_val_4500_captions.json (official), root/nocaps/nocaps_val.json (LAVIS),
    images in root/nocaps/val/<open_images_id>.jpg (so also images/val/ for LAVIS paths: root/nocaps)."""
    rng = np.random.default_rng(0)
    folder = root / "nocaps"
    images, annotations = [], []
    for k, (oid, domain, refs) in enumerate(NOCAPS):
        save_image(folder / "val" / f"{oid}.jpg", 20 + k, rng)
        images.append({"id": k, "open_images_id": oid, "height": 24, "width": 20 + k,
                       "coco_url": f"https://s3.amazonaws.com/nocaps/val/{oid}.jpg", "file_name": f"{oid}.jpg",
                       "license": 0, "date_captured": "2018-11-06 11:04:33", "domain": domain})
        annotations += [{"image_id": k, "id": 10 * k + j, "caption": ref} for j, ref in enumerate(refs)]
    official = {"licenses": [], "info": {"url": "http://nocaps.org", "version": "0.1",
                                         "description": "nocaps validation dataset"},
                "images": images, "annotations": annotations}
    (folder / "nocaps_val_4500_captions.json").write_text(json.dumps(official))
    lavis = [{"image": f"val/{oid}.jpg", "img_id": k} for k, (oid, _, _) in enumerate(NOCAPS)]
    (folder / "nocaps_val.json").write_text(json.dumps(lavis))
    return {"official": folder / "nocaps_val_4500_captions.json", "lavis": folder / "nocaps_val.json",
            "image_root": folder / "val", "lavis_image_root": folder}


def write_coco_karpathy(root: Path) -> dict[str, Path]:
    """root/coco/annotations/dataset_coco.json (Karpathy) and coco_karpathy_test.json (LAVIS), images
    in root/coco/images/{val2014,train2014}/COCO_<folder>_<12-digit id>.jpg."""
    rng = np.random.default_rng(1)
    folder = root / "coco"
    entries, lavis, sentid = [], [], 0
    for k, (cocoid, split, refs) in enumerate(COCO):
        filepath = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        save_image(folder / "images" / filepath / filename, 20 + k, rng)
        sentences = [{"tokens": ref.lower().rstrip(".").split(), "raw": ref, "imgid": k, "sentid": sentid + j}
                     for j, ref in enumerate(refs)]
        entries.append({"filepath": filepath, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                        "imgid": k, "split": split, "sentences": sentences, "cocoid": cocoid})
        sentid += len(refs)
        if split == "test":
            lavis.append({"image": f"{filepath}/{filename}", "caption": refs})
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    (folder / "annotations" / "coco_karpathy_test.json").write_text(json.dumps(lavis))
    return {"karpathy": folder / "annotations" / "dataset_coco.json",
            "lavis": folder / "annotations" / "coco_karpathy_test.json", "image_root": folder / "images"}
