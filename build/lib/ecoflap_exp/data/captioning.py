"""Captioning benchmark readers: NoCaps val and the COCO Karpathy test split, in their released
formats, as one list of images (id, file, reference captions, NoCaps domain) in file order.

NoCaps (reference/evals.md 3.1):
- official `nocaps_val_4500_captions.json` (COCO caption format): images[] with id, file_name
  ("<open_images_id>.jpg") and domain ("in-domain" | "near-domain" | "out-domain");
  annotations[] with image_id and caption (10 per image). The only file with references and
  domains, so scoring always needs it.
- LAVIS `nocaps_val.json`: a list of {"image": "val/<file_name>", "img_id": <official id>}; no
  captions and no domains, so it can only say which images to caption and where they lie.
COCO Karpathy test:
- Karpathy's `dataset_coco.json`: images[] with split ("train" | "restval" | "val" | "test"),
  filepath ("val2014"), filename, cocoid and sentences[].raw; the test split is 5,000 images.
- LAVIS `coco_karpathy_test.json`: a list of {"image": "val2014/COCO_val2014_<12-digit id>.jpg",
  "caption": [5 strings]}; the image id is the number after the file name's last "_", as LAVIS
  derives it (also the id in its `coco_karpathy_test_gt.json`).
An image listed more than once is kept once (its first entry), with the references of every entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecoflap_exp.data.files import check_images_exist, read_json_file
from ecoflap_exp.errors import UserError

NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")

NOCAPS_OFFICIAL_SOURCE = (
    "download nocaps_val_4500_captions.json from https://nocaps.org/download (the images are each entry's "
    "coco_url, saved under the image root as <file_name>)"
)
NOCAPS_LAVIS_SOURCE = (
    "LAVIS's list is https://storage.googleapis.com/sfr-vision-language-research/datasets/nocaps_val.json; "
    "it only lists images, the references and domains come from the official nocaps_val_4500_captions.json "
    "(https://nocaps.org/download)"
)
KARPATHY_SOURCE = (
    "use dataset_coco.json from Karpathy's splits (https://cs.stanford.edu/people/karpathy/deepimagesent/"
    "caption_datasets.zip) or LAVIS's https://storage.googleapis.com/sfr-vision-language-research/datasets/"
    "coco_karpathy_test.json, with the COCO 2014 images (https://images.cocodataset.org/zips/val2014.zip) "
    "unpacked under the image root as val2014/"
)
CONFIG_HINT = "set paths.data_root (env ECOFLAP_DATA) or the eval's annotations/image_root"


@dataclass
class CaptionedImage:
    image_id: int
    path: Path
    references: list[str] = field(default_factory=list)
    domain: str | None = None


def load_json(path: str, dataset: str, source: str) -> Any:
    return read_json_file(path, f"{dataset} annotation file", f"{source}; {CONFIG_HINT}")


def read_nocaps(annotations: str, image_root: str, image_list: str | None = None) -> list[CaptionedImage]:
    """NoCaps val images with their references and domains, from the official captions file; with
    `image_list` (LAVIS's nocaps_val.json) only the images it lists, at the paths it gives."""
    data = load_json(annotations, "NoCaps val", NOCAPS_OFFICIAL_SOURCE)
    if isinstance(data, list):
        raise UserError(
            f"{annotations!r} is a list of images (LAVIS's nocaps_val.json: image, img_id) with no reference "
            f"captions and no domains, so it cannot be scored per domain; set annotations to the official "
            f"nocaps_val_4500_captions.json ({NOCAPS_OFFICIAL_SOURCE}) and pass this list as image_list"
        )
    images = read_coco_caption_format(data, annotations, image_root, "NoCaps val")
    for i, image in enumerate(images.values()):
        if image.domain not in NOCAPS_DOMAINS:
            raise UserError(
                f"{annotations}: images[{i}] (id {image.image_id}) has domain {image.domain!r}, not one of "
                f"{', '.join(NOCAPS_DOMAINS)}; per-domain scoring needs nocaps_val_4500_captions.json as released "
                f"({NOCAPS_OFFICIAL_SOURCE})"
            )
    if image_list is None:
        return list(images.values())
    listed: dict[int, CaptionedImage] = {}
    for image_id, relative in read_lavis_nocaps_list(image_list):
        if image_id not in images:
            raise UserError(f"{image_list}: img_id {image_id} ({relative}) is not an image of {annotations}; "
                            f"both files must be NoCaps val")
        official = images[image_id]
        if Path(relative).name != official.path.name:
            raise UserError(f"{image_list}: img_id {image_id} is {relative!r} but {official.path.name!r} in "
                            f"{annotations}; the list and the captions file disagree")
        listed.setdefault(image_id, CaptionedImage(image_id, Path(image_root).expanduser() / relative,
                                                   official.references, official.domain))
    return list(listed.values())


def read_lavis_nocaps_list(path: str) -> list[tuple[int, str]]:
    """(img_id, image path relative to the image root) of each entry of LAVIS's nocaps_val.json."""
    data = load_json(path, "NoCaps val (LAVIS image list)", NOCAPS_LAVIS_SOURCE)
    if not isinstance(data, list):
        raise UserError(f"{path} is not LAVIS's nocaps_val.json (a JSON list of {{image, img_id}}); "
                        f"{NOCAPS_LAVIS_SOURCE}")
    entries = []
    for i, entry in enumerate(data):
        image, image_id = (entry.get("image"), entry.get("img_id")) if isinstance(entry, dict) else (None, None)
        if not isinstance(image, str) or not isinstance(image_id, int):
            raise UserError(f"{path}: entry [{i}] needs a string 'image' and an integer 'img_id', got {entry!r}")
        entries.append((image_id, image))
    return entries


def read_coco_caption_format(data: Any, path: str, image_root: str, dataset: str) -> dict[int, CaptionedImage]:
    """images[] (id, file_name, optional domain) + annotations[] (image_id, caption) -> id -> image."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path} is not a COCO caption file (a JSON object with 'images' and 'annotations' lists)")
    root = Path(image_root).expanduser()
    images: dict[int, CaptionedImage] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) \
                or not isinstance(entry.get("file_name"), str):
            raise UserError(f"{path}: images[{i}] needs an integer 'id' and a string 'file_name', got {entry!r}")
        images.setdefault(entry["id"], CaptionedImage(entry["id"], root / entry["file_name"],
                                                      domain=entry.get("domain")))
    for i, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
            raise UserError(f"{path}: annotations[{i}] needs a string 'caption', got {entry!r}")
        if entry.get("image_id") not in images:
            raise UserError(f"{path}: annotations[{i}] refers to image_id {entry.get('image_id')!r}, which is not "
                            f"in images[]")
        images[entry["image_id"]].references.append(entry["caption"])
    return check_references(images, path, dataset)


def read_coco_karpathy(annotations: str, image_root: str, split: str = "test") -> list[CaptionedImage]:
    """The COCO images of one Karpathy split with their references, from Karpathy's dataset_coco.json
    or LAVIS's coco_karpathy_<split>.json (detected by the file's shape)."""
    data = load_json(annotations, "COCO Karpathy", KARPATHY_SOURCE)
    if isinstance(data, list):
        images = read_lavis_coco_list(data, annotations, image_root)
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        images = read_karpathy_json(data, annotations, image_root, split)
    else:
        raise UserError(f"{annotations} is neither Karpathy's dataset_coco.json (an object with 'images') nor "
                        f"LAVIS's coco_karpathy_{split}.json (a list of {{image, caption}}); {KARPATHY_SOURCE}")
    return list(check_references(images, annotations, "COCO Karpathy").values())


def read_karpathy_json(data: dict, path: str, image_root: str, split: str) -> dict[int, CaptionedImage]:
    root = Path(image_root).expanduser()
    images: dict[int, CaptionedImage] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or entry.get("split") != split:
            continue
        sentences = entry.get("sentences")
        image_id = entry.get("cocoid", entry.get("imgid"))
        if not isinstance(entry.get("filename"), str) or not isinstance(image_id, int) \
                or not isinstance(sentences, list) \
                or not all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
            raise UserError(f"{path}: images[{i}] needs 'filename', an integer 'cocoid' and 'sentences' with a 'raw' "
                            f"string each, got {str(entry)[:300]}")
        image = images.setdefault(image_id, CaptionedImage(image_id, root / entry.get("filepath", "") /
                                                           entry["filename"]))
        image.references.extend(s["raw"] for s in sentences)
    if not images:
        raise UserError(f"{path} has no images with split == {split!r}; Karpathy's splits are train, restval, val "
                        f"and test")
    return images


LAVIS_COCO_ID = re.compile(r"_(\d+)\.jpg$")


def read_lavis_coco_list(data: list, path: str, image_root: str) -> dict[int, CaptionedImage]:
    root = Path(image_root).expanduser()
    images: dict[int, CaptionedImage] = {}
    for i, entry in enumerate(data):
        image, captions = (entry.get("image"), entry.get("caption")) if isinstance(entry, dict) else (None, None)
        if isinstance(captions, str):
            captions = [captions]
        match = LAVIS_COCO_ID.search(image) if isinstance(image, str) else None
        if match is None or not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise UserError(f"{path}: entry [{i}] needs 'image' (e.g. val2014/COCO_val2014_000000391895.jpg, the "
                            f"id after the last '_') and 'caption' (a list of strings), got {entry!r}")
        image_id = int(match.group(1))
        images.setdefault(image_id, CaptionedImage(image_id, root / image)).references.extend(captions)
    return images


def check_references(images: dict[int, CaptionedImage], path: str, dataset: str) -> dict[int, CaptionedImage]:
    """CIDEr and SPICE need at least one reference per image."""
    bare = [image.image_id for image in images.values() if not image.references]
    if bare:
        raise UserError(f"{path}: {len(bare)} {dataset} image(s) have no reference caption (first id {bare[0]}); "
                        f"the file is incomplete, download it again")
    if not images:
        raise UserError(f"{path} lists no {dataset} images")
    return images


def check_captioned_images(images: list[CaptionedImage], image_root: str, dataset: str, source: str) -> None:
    check_images_exist([image.path for image in images], f"{dataset} images under image_root {image_root!r}",
                       f"{source}; {CONFIG_HINT}")
