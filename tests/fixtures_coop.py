"""Tiny copies of CoOp's 11 datasets in their released layouts (CoOp DATASETS.md): split_zhou JSON
files with CoOp's relative paths and class names, FGVCAircraft's variants.txt and
images_variant_<split>.txt, ImageNet's images/<split>/<wnid>/ folders with classnames.txt, and
ImageNet val as the flat ILSVRC2012_val_* folder with Kaggle's LOC_val_solution.csv.

Every image is a solid colour that encodes its class (`colour_of`), so a stub model can know the true
class without the reader. Labels are deliberately not in alphabetical order of class names."""

import json
from pathlib import Path

from PIL import Image

from ecoflap_exp.data.coop import DATASETS

SPLITS = ("train", "val", "test")

#: per dataset: (class name as in the split file, relative path of image n of that class), in label order
CLASSES = {
    "caltech101": [("face", "Faces/image_{n:04d}.jpg"), ("accordion", "accordion/image_{n:04d}.jpg"),
                   ("leopard", "Leopards/image_{n:04d}.jpg")],
    "dtd": [("zigzagged", "zigzagged/zigzagged_{n:04d}.jpg"), ("banded", "banded/banded_{n:04d}.jpg"),
            ("polka-dotted", "polka-dotted/polka-dotted_{n:04d}.jpg")],
    "eurosat": [("Sea or Lake", "SeaLake/SeaLake_{n}.jpg"), ("Annual Crop Land", "AnnualCrop/AnnualCrop_{n}.jpg"),
                ("Forest", "Forest/Forest_{n}.jpg")],
    "food101": [("waffles", "waffles/{n}0043.jpg"), ("apple_pie", "apple_pie/{n}0056.jpg"),
                ("ice_cream", "ice_cream/{n}0078.jpg")],
    "oxford_flowers": [("wallflower", "image_0{n}001.jpg"), ("pink primrose", "image_0{n}002.jpg"),
                       ("globe thistle", "image_0{n}003.jpg")],
    "oxford_pets": [("yorkshire_terrier", "yorkshire_terrier_{n}.jpg"), ("abyssinian", "Abyssinian_{n}.jpg"),
                    ("american_bulldog", "american_bulldog_{n}.jpg")],
    "stanford_cars": [("2012 Tesla Model S Sedan", "cars_{split}/0{n}001.jpg"),
                      ("2000 AM General Hummer SUV", "cars_{split}/0{n}002.jpg"),
                      ("2012 Audi TTS Coupe", "cars_{split}/0{n}003.jpg")],
    "sun397": [("outdoor apartment_building", "a/apartment_building/outdoor/sun_a{n}.jpg"),
               ("abbey", "a/abbey/sun_b{n}.jpg"), ("indoor bow_window", "b/bow_window/indoor/sun_c{n}.jpg")],
    "ucf101": [("Yo_Yo", "Yo_Yo/v_YoYo_g0{n}_c01.jpg"),
               ("Apply_Eye_Makeup", "Apply_Eye_Makeup/v_ApplyEyeMakeup_g0{n}_c01.jpg"),
               ("Basketball", "Basketball/v_Basketball_g0{n}_c01.jpg")],
    "fgvc_aircraft": [("707-320", ""), ("A300B4", ""), ("Cessna 172", "")],
    "imagenet": [("tench", "n01440764"), ("goldfish", "n01443537"), ("great white shark", "n01484850")],
}
#: images per class in each split
PER_CLASS = {"train": 2, "val": 1, "test": 2}


def colour_of(label: int) -> int:
    return 40 + 80 * label


def write_image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (colour_of(label),) * 3).save(path, quality=95)


def write_coop(root: Path, dataset: str) -> dict[str, list[tuple[Path, int, str]]]:
    """The dataset under root (the data root) -> per split the expected (image path, label, class
    name with '_' as spaces), in the order CoOp lists them."""
    info = DATASETS[dataset]
    folder = root / info.dataset_dir
    image_dir = folder / info.image_dir
    expected: dict[str, list[tuple[Path, int, str]]] = {s: [] for s in SPLITS}
    if dataset == "imagenet":
        (folder / "classnames.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "classnames.txt").write_text("".join(f"{wnid} {name}\n" for name, wnid in CLASSES[dataset]))
        for split in ("train", "val"):
            for label, (name, wnid) in enumerate(CLASSES[dataset]):
                for n in range(PER_CLASS[split]):
                    path = image_dir / split / wnid / f"{wnid}_{n}.JPEG"
                    write_image(path, label)
                    expected[split].append((path, label, name))
        expected["test"] = expected["val"]
        return expected
    if dataset == "fgvc_aircraft":
        names = [name for name, _ in CLASSES[dataset]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "variants.txt").write_text("".join(f"{name}\n" for name in names))
        for split in SPLITS:
            lines = []
            for label, name in enumerate(names):
                for n in range(PER_CLASS[split]):
                    image_id = f"{SPLITS.index(split)}{label}{n:05d}"
                    write_image(image_dir / f"{image_id}.jpg", label)
                    lines.append(f"{image_id} {name}\n")
                    expected[split].append((image_dir / f"{image_id}.jpg", label, name))
            (folder / f"images_variant_{split}.txt").write_text("".join(lines))
        return expected
    split_file = {}
    for split in SPLITS:
        entries = []
        for label, (name, pattern) in enumerate(CLASSES[dataset]):
            for n in range(PER_CLASS[split]):
                rel = pattern.format(n=10 * SPLITS.index(split) + n, split=split)
                write_image(image_dir / rel, label)
                entries.append([rel, label, name])
                expected[split].append((image_dir / rel, label, name.replace("_", " ")))
        split_file[split] = entries
    (folder / f"split_zhou_{info.coop_name}.json").write_text(json.dumps(split_file, indent=4))
    return expected


def write_imagenet_flat_val(root: Path) -> tuple[Path, Path, list[tuple[Path, int]]]:
    """ImageNet val as released for the Kaggle localisation challenge: a flat folder of
    ILSVRC2012_val_*.JPEG and LOC_val_solution.csv (rows not sorted), for CLASSES["imagenet"]."""
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True, exist_ok=True)
    labels = [2, 0, 1, 0, 2]
    wnids = [wnid for _, wnid in CLASSES["imagenet"]]
    rows = []
    for i, label in enumerate(labels, 1):
        image_id = f"ILSVRC2012_val_{i:08d}"
        write_image(val / f"{image_id}.JPEG", label)
        rows.append(f"{image_id},{wnids[label]} 10 20 200 220 {wnids[label]} 5 5 50 60 \n")
    solution = root / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n" + "".join(reversed(rows)))
    return val, solution, [(val / f"ILSVRC2012_val_{i:08d}.JPEG", label) for i, label in enumerate(labels, 1)]
