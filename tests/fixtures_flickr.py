"""A tiny Flickr30k in both released annotation formats: Karpathy's dataset_flickr30k.json (with
train/val images that a test-split reader must skip) and LAVIS's flickr30k/annotations/test.json,
images in flickr30k/images/flickr30k-images/. Image i of the test split is a solid grey of value
`grey_of(i)`, so a stub model can tell images apart."""

import json
from pathlib import Path

from PIL import Image


def grey_of(index: int) -> int:
    return 30 + 60 * index


def write_flickr30k(root: Path, captions: list[list[str]]) -> dict[str, Path]:
    """Test images with the given captions (one list per image) plus one train and one val image;
    returns the annotation files and the two image roots."""
    images = root / "flickr30k" / "images" / "flickr30k-images"
    images.mkdir(parents=True, exist_ok=True)
    entries = [("train", "2000000001.jpg", ["a train caption ."], 0), ("val", "2000000002.jpg", ["a val caption"], 0)]
    entries += [("test", f"{1000092795 + i}.jpg", caps, grey_of(i)) for i, caps in enumerate(captions)]
    karpathy, lavis, sentid = [], [], 0
    for imgid, (split, filename, caps, grey) in enumerate(entries):
        Image.new("RGB", (20, 20), (grey,) * 3).save(images / filename, quality=95)
        sentences = []
        for raw in caps:
            sentences.append({"tokens": raw.lower().split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        karpathy.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                         "split": split, "filename": filename})
        if split == "test":
            lavis.append({"image": f"flickr30k-images/{filename}", "caption": caps})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": karpathy, "dataset": "flickr30k"}))
    annotations = root / "flickr30k" / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "test.json").write_text(json.dumps(lavis))
    return {"karpathy": root / "dataset_flickr30k.json", "lavis": annotations / "test.json",
            "karpathy_images": images, "lavis_images": images.parent}
