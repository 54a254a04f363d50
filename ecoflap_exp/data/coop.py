"""CoOp's 11 zero-shot classification datasets in the layout of CoOp's DATASETS.md
(github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md), read as CoOp's dataset classes read them, and
calibration pairs from their train splits (ECoFLaP's CLIP calibration).

Layouts, under `<root>/<dataset_dir>/`:
- nine datasets: `split_zhou_<Name>.json` = {"train"|"val"|"test": [[rel_path, label, classname], ...]},
  rel_path relative to the dataset's image folder (StanfordCars: the dataset folder itself);
- FGVCAircraft: `variants.txt` (one class per line, label = line index) and
  `images_variant_{train,val,test}.txt` (lines "<image id> <variant>", image images/<id>.jpg);
- ImageNet: `images/{train,val}/<wnid>/<image>` and `classnames.txt` (lines "<wnid> <class name>");
  test = val; label = index of the wnid in sorted order. Without classnames.txt, open_clip's
  IMAGENET_CLASSNAMES (OpenAI's curated names, the source of CoOp's file; sorted-wnid order) name
  the 1000 classes. The val images may also sit elsewhere (`imagenet_val`): a folder of wnid
  folders (the usual "valprep" layout), or the flat folder of ILSVRC2012_val_*.JPEG files with the
  Kaggle ImageNet localisation challenge's `LOC_val_solution.csv` (columns ImageId, PredictionString;
  the first word of PredictionString is the wnid) as `imagenet_val_labels`.

Class order = label order; class names are used with "_" read as a space, as CoOp's prompts do.
Each dataset carries CoOp's one hand-written prompt template (trainers/zsclip.py CUSTOM_TEMPLATES).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ecoflap_exp.data.files import read_text
from ecoflap_exp.data.images import IMAGE_SUFFIXES, LocalImageCalibration
from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Count, Fraction, NonNegativeInt

COOP_LAYOUT_URL = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CoOpDataset:
    coop_name: str   # CoOp's class name, which names the split file and the template
    dataset_dir: str
    image_dir: str   # relative to dataset_dir ("" = the dataset folder itself)
    template: str


DATASETS: dict[str, CoOpDataset] = {
    "caltech101": CoOpDataset("Caltech101", "caltech-101", "101_ObjectCategories", "a photo of a {}."),
    "dtd": CoOpDataset("DescribableTextures", "dtd", "images", "{} texture."),
    "eurosat": CoOpDataset("EuroSAT", "eurosat", "2750", "a centered satellite photo of {}."),
    "fgvc_aircraft": CoOpDataset("FGVCAircraft", "fgvc_aircraft", "images", "a photo of a {}, a type of aircraft."),
    "food101": CoOpDataset("Food101", "food-101", "images", "a photo of {}, a type of food."),
    "imagenet": CoOpDataset("ImageNet", "imagenet", "images", "a photo of a {}."),
    "oxford_flowers": CoOpDataset("OxfordFlowers", "oxford_flowers", "jpg", "a photo of a {}, a type of flower."),
    "oxford_pets": CoOpDataset("OxfordPets", "oxford_pets", "images", "a photo of a {}, a type of pet."),
    "stanford_cars": CoOpDataset("StanfordCars", "stanford_cars", "", "a photo of a {}."),
    "sun397": CoOpDataset("SUN397", "sun397", "SUN397", "a photo of a {}."),
    "ucf101": CoOpDataset("UCF101", "ucf101", "UCF-101-midframes", "a photo of a person doing {}."),
}


@dataclass
class CoOpSplit:
    """One split of a dataset: (image path, label) items, class names by label, CoOp's template."""

    dataset: str
    items: list[tuple[Path, int]]
    classnames: list[str]
    template: str

    def prompts(self) -> list[str]:
        return [self.template.format(name) for name in self.classnames]


def dataset_info(dataset: str) -> CoOpDataset:
    if dataset not in DATASETS:
        raise UserError(f"CoOp dataset {dataset!r} is unknown; use one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def missing(path: Path, dataset: str, what: str) -> UserError:
    return UserError(f"CoOp dataset {dataset!r}: {what} {path} does not exist; download and lay out the dataset "
                     f"as CoOp's DATASETS.md says ({COOP_LAYOUT_URL}) under the data root (paths.data_root)")


def read_coop_split(dataset: str, root: str, split: str = "test", imagenet_val: str | None = None,
                    imagenet_val_labels: str | None = None) -> CoOpSplit:
    """A split ("train", "val" or "test") of one of the 11 datasets under `root` (the data root)."""
    info = dataset_info(dataset)
    if split not in SPLITS:
        raise UserError(f"split={split!r} is unknown; use one of {', '.join(SPLITS)}")
    if dataset != "imagenet" and (imagenet_val or imagenet_val_labels):
        raise UserError(f"imagenet_val and imagenet_val_labels apply to the imagenet dataset only, not {dataset!r}")
    folder = Path(root).expanduser() / info.dataset_dir
    if dataset == "imagenet":
        items, classnames = read_imagenet(folder, split, imagenet_val, imagenet_val_labels)
    elif dataset == "fgvc_aircraft":
        items, classnames = read_fgvc_aircraft(folder, split)
    else:
        items, classnames = read_split_file(folder / f"split_zhou_{info.coop_name}.json", folder / info.image_dir,
                                            split, dataset)
    return CoOpSplit(dataset, items, [name.replace("_", " ") for name in classnames], info.template)


def read_split_file(path: Path, image_dir: Path, split: str, dataset: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """CoOp's split_zhou_<Name>.json; class names by label gathered over all three splits."""
    if not path.is_file():
        raise missing(path, dataset, "split file")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-download the split file ({COOP_LAYOUT_URL})") from err
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
        raise UserError(f"{path}: expected a JSON object with 'train', 'val' and 'test' lists of "
                        f"[image path, label, class name]")
    names: dict[int, str] = {}
    items: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for s in SPLITS:
        for i, entry in enumerate(data[s]):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and isinstance(entry[2], str)):
                raise UserError(f"{path}: entry {s}[{i}] = {entry!r} is not [image path, integer label, class name]")
            rel, label, name = entry
            if names.setdefault(label, name) != name:
                raise UserError(f"{path}: label {label} is named both {names[label]!r} and {name!r} "
                                f"(entry {s}[{i}])")
            items[s].append((image_dir / rel, label))
    return items[split], classes_by_label(names, path)


def classes_by_label(names: dict[int, str], source: Path) -> list[str]:
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise UserError(f"{source}: labels must run 0..{len(names) - 1} with no gaps; missing {gaps[:5]}, "
                        f"labels seen {sorted(names)[:5]}...")
    return [names[label] for label in range(len(names))]


def read_fgvc_aircraft(folder: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """variants.txt (class list) and images_variant_<split>.txt ("<image id> <variant name>")."""
    variants_file = folder / "variants.txt"
    if not variants_file.is_file():
        raise missing(variants_file, "fgvc_aircraft", "class list")
    classnames = [line.strip() for line in read_text(variants_file).splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    split_file = folder / f"images_variant_{split}.txt"
    if not split_file.is_file():
        raise missing(split_file, "fgvc_aircraft", "split list")
    items = []
    for lineno, line in enumerate(read_text(split_file).splitlines(), 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise UserError(f"{split_file}, line {lineno}: {line.strip()!r} is not '<image id> <variant>' with a "
                            f"variant listed in {variants_file}")
        items.append((folder / "images" / f"{image_id}.jpg", label_of[variant]))
    return items, classnames


def read_imagenet(folder: Path, split: str, val_dir: str | None,
                  val_labels: str | None) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageNet in CoOp's layout (test = val), or val from a synset-folder tree or a flat folder
    with LOC_val_solution.csv; labels are indices of sorted wnids."""
    split_dir = "train" if split == "train" else "val"
    if split_dir == "train" and (val_dir or val_labels):
        raise UserError("imagenet_val and imagenet_val_labels name the val images; the train split is read from "
                        "<data root>/imagenet/images/train")
    images = Path(val_dir).expanduser() if split_dir == "val" and val_dir else folder / "images" / split_dir
    if not images.is_dir():
        raise missing(images, "imagenet", "image folder")
    if val_labels:
        labelled = read_loc_val_solution(Path(val_labels).expanduser(), images)
    else:
        labelled = [(f, d.name) for d in sorted(p for p in images.iterdir() if p.is_dir())
                    for f in sorted(d.iterdir()) if f.suffix in IMAGE_SUFFIXES]
        if not labelled:
            raise UserError(f"ImageNet images {images} hold no <wnid>/<image> files; for the flat val folder of "
                            f"ILSVRC2012_val_*.JPEG set imagenet_val_labels to LOC_val_solution.csv")
    wnids, classnames = imagenet_classes(folder / "classnames.txt", {wnid for _, wnid in labelled})
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    unknown = sorted({wnid for _, wnid in labelled} - set(label_of))
    if unknown:
        raise UserError(f"ImageNet wnids {unknown[:5]} in {images} are not in {folder / 'classnames.txt'}")
    return [(path, label_of[wnid]) for path, wnid in labelled], classnames


def imagenet_classes(classnames_file: Path, seen: set[str]) -> tuple[list[str], list[str]]:
    """Sorted wnids and their names, from CoOp's classnames.txt or else open_clip's 1000 names."""
    if classnames_file.is_file():
        pairs = {}
        for lineno, line in enumerate(read_text(classnames_file).splitlines(), 1):
            if not line.strip():
                continue
            wnid, _, name = line.strip().partition(" ")
            if not name:
                raise UserError(f"{classnames_file}, line {lineno}: {line!r} is not '<wnid> <class name>'")
            pairs[wnid] = name
        wnids = sorted(pairs)
        return wnids, [pairs[w] for w in wnids]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    if len(seen) != len(IMAGENET_CLASSNAMES):
        raise UserError(f"{classnames_file} does not exist and the images cover {len(seen)} wnids, not all "
                        f"{len(IMAGENET_CLASSNAMES)}, so open_clip's class names cannot be matched to them; add "
                        f"CoOp's classnames.txt ({COOP_LAYOUT_URL})")
    return sorted(seen), list(IMAGENET_CLASSNAMES)


def read_loc_val_solution(path: Path, images: Path) -> list[tuple[Path, str]]:
    """(image, wnid) from the Kaggle localisation challenge's LOC_val_solution.csv, by ImageId."""
    if not path.is_file():
        raise missing(path, "imagenet", "val label file (LOC_val_solution.csv)")
    rows = []
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected the columns ImageId,PredictionString of LOC_val_solution.csv, "
                            f"got {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):
            words = (row["PredictionString"] or "").split()
            if not row["ImageId"] or not words or not words[0].startswith("n"):
                raise UserError(f"{path}, line {lineno}: {row} has no ImageId or no wnid first in PredictionString")
            rows.append((images / f"{row['ImageId']}.JPEG", words[0]))
    return sorted(rows)


class CoOpCalibration(LocalImageCalibration):
    """ECoFLaP's CLIP calibration: images of a CoOp dataset's train split, each captioned with the
    dataset's template filled with its class name (the text of the contrastive loss). A seeded
    shuffle (Dassl's random train sampler) or the first num_samples in split order."""

    kind = "image_captions"

    def __init__(self, dataset: str, root: str, num_samples: Count = 128, batch_size: Count = 16,
                 seed: NonNegativeInt = 0, shuffle: bool = True, max_bad_fraction: Fraction = 0.05):
        super().__init__(num_samples, batch_size, seed, shuffle, max_bad_fraction)
        dataset_info(dataset)
        self.dataset = dataset
        self.root = root

    def files(self) -> list[str]:
        return [str(self.root)]

    def items(self) -> list[tuple[Path, str]]:
        split = read_coop_split(self.dataset, self.root, "train")
        prompts = split.prompts()
        return [(path, prompts[label]) for path, label in split.items]
