"""Put each benchmark's released files where the configs read them, and say exactly what is missing.

    python scripts/prepare_data.py DATASET RAW_DIR [DATA_ROOT] [--link]
    python scripts/prepare_data.py --check DATASET [DATA_ROOT]
    python scripts/prepare_data.py --list

DATASET is one name of `--list` or `all`. DATA_ROOT defaults to paths.data_root of
configs/config.yaml (env ECOFLAP_DATA, else $ECOFLAP_ROOT/data, else ./data).

For every file a dataset needs, at the path under DATA_ROOT that its eval/calib config names
(the DATASETS table below; tests/test_prepare_data.py checks the table against the configs):
1. found: it is already there (never overwritten: files under DATA_ROOT are left as they are);
2. placed: it is looked up in RAW_DIR (searched recursively, once) by its released name, as the
   extracted file or as a member of the official archive that holds it (v2_Questions_Val_mscoco.zip,
   questions1.2.zip, caption_datasets.zip, val2014.zip, ...), and copied there (symlinked with
   --link; archive members are extracted, one member at a time, only those needed); a file released
   in another format is converted (Flickr30k: Karpathy's dataset_flickr30k.json -> LAVIS's
   annotations/test.json; WikiText-2: wiki.test.raw -> the HF parquet; ImageNet: the flat val
   images + Kaggle's LOC_val_solution.csv -> <wnid>/ folders);
3. missing: not in RAW_DIR either; the line says which file and where to get it.
Then the project's own reader (read_vqa, read_gqa, read_nocaps, read_coco_karpathy,
read_retrieval_set, read_coop_split, image_folder, read_documents, read_pairs) reads the placed
files, so "ready" means the eval will read them; a reader's complaint is printed as `invalid`.
The images it lists are found or placed the same way (an image is found in RAW_DIR by its path
relative to the image root, e.g. val2014/COCO_val2014_000000262148.jpg, so only the images the
split uses are copied or extracted) and summarised in one line per image root.

Nothing is downloaded. A rerun does nothing new. The exit status is 1 when a required file or
image is missing or a reader rejects a file, 2 on a usage error. CC3M comes from
scripts/prepare_cc3m.py (img2dataset's output -> cc3m/cc3m.tsv); this script only checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

from omegaconf import OmegaConf

from ecoflap_exp.data.captioning import read_coco_karpathy, read_nocaps
from ecoflap_exp.data.captions import read_pairs
from ecoflap_exp.data.coop import COOP_LAYOUT_URL, SPLITS, read_coop_split, read_loc_val_solution
from ecoflap_exp.data.coop import DATASETS as COOP_DATASETS
from ecoflap_exp.data.flickr import read_retrieval_set
from ecoflap_exp.data.images import image_folder
from ecoflap_exp.data.text import read_documents
from ecoflap_exp.data.vqa import read_gqa, read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.progress import track

ROOT = Path(__file__).resolve().parents[1]
SHOWN = 5  # missing images listed by name
WNID = re.compile(r"n\d{8}")


class Found(NamedTuple):
    """A released file in the raw dir: a file, or a member of an archive."""

    path: Path
    member: str | None = None

    def parts(self) -> tuple[str, ...]:
        return self.path.parts if self.member is None else PurePosixPath(self.member).parts

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"


def shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class RawDir:
    """The files and folders under a raw dir (walked once, symlinks followed) and, when asked, the
    members of the release archives in it."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise UserError(f"raw dir {root} is not a folder; give the folder holding the downloaded files")
        self.root = root
        self.files: dict[str, list[Path]] = defaultdict(list)
        self.dirs: dict[str, list[Path]] = defaultdict(list)
        self.listed: dict[Path, dict[str, list[str]]] = {}
        seen = set()
        for folder, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a symlink loop
                dirnames.clear()
                continue
            seen.add(real)
            dirnames.sort()
            for name in dirnames:
                self.dirs[name].append(Path(folder, name))
            for name in sorted(filenames):
                self.files[name].append(Path(folder, name))
        print(f"raw dir {root}: {sum(map(len, self.files.values()))} files")

    def members(self, archive: Path) -> dict[str, list[str]]:
        """File name -> member paths of a zip or tar archive (listed once)."""
        if archive not in self.listed:
            print(f"listing {archive} ...")
            try:
                if zipfile.is_zipfile(archive):
                    with zipfile.ZipFile(archive) as zf:
                        names = [n for n in zf.namelist() if not n.endswith("/")]
                else:
                    with tarfile.open(archive) as tar:
                        names = [m.name for m in tar if m.isfile()]
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
                raise UserError(f"{archive} is not a readable zip or tar archive ({err}); download it again") from err
            by_name: dict[str, list[str]] = defaultdict(list)
            for name in names:
                by_name[PurePosixPath(name).name].append(name)
            self.listed[archive] = by_name
        return self.listed[archive]

    def find(self, tail: tuple[str, ...], target: tuple[str, ...], archives: tuple[str, ...] = ()) -> Found | None:
        """The released copy of a target: a file whose path ends with `tail`, else such a member of one
        of the named archives; of several, the one sharing the longest path tail with `target`."""
        candidates = [Found(p) for p in self.files.get(tail[-1], ()) if p.parts[-len(tail):] == tail]
        if not candidates:
            candidates = [Found(archive, member) for name in archives for archive in self.files.get(name, ())
                          for member in self.members(archive).get(tail[-1], ())
                          if PurePosixPath(member).parts[-len(tail):] == tail]
        return max(candidates, key=lambda found: shared_tail(found.parts(), target), default=None)


Converter = Callable[[Path, Path], str]  # (released file, where to write ours) -> what was done
Gatherer = Callable[[RawDir, Path, bool], str | None]  # (raw dir, target, link) -> what was done


@dataclass(frozen=True)
class File:
    """One file (or folder) a dataset needs, at `rel` under the data root."""

    rel: str
    source: str  # where to get it
    archives: tuple[str, ...] = ()  # official archives that hold it
    # its released forms: path tail -> None (placed as it is) or the converter to this file's format;
    # by default its own file name
    released: dict[str, Converter | None] = field(default_factory=dict)
    optional: str = ""  # what needs it, when not every run of the dataset does
    config: str = ""  # "<config>:<key>" whose value is this path
    gather: Gatherer | None = None  # a folder assembled from the raw dir (ImageNet)


@dataclass(frozen=True)
class Images:
    """The images a dataset's reader lists, under `rel`."""

    rel: str
    source: str
    archives: tuple[str, ...] = ()
    config: str = ""
    by_name: bool = False  # found by file name alone (releases name the folder differently)


class Placed(NamedTuple):
    """What a dataset's reader gets: the data root, its files (None: an absent optional one), its image root."""

    root: Path
    files: list[str | None]
    images: str


@dataclass(frozen=True)
class Dataset:
    title: str
    uses: str  # the configs that read it
    files: tuple[File, ...]
    read: Callable[[Placed], list[Path]]  # the project's reader on the placed files -> the images it opens
    images: Images | None = None


def progress(items: list, description: str) -> Iterable:
    """A progress bar for many items; none for one."""
    return track(items, description, total=len(items)) if len(items) > 1 else items


def write_stream(source: IO[bytes], target: Path) -> None:
    """Write through a .part file, so an interrupted run never leaves a truncated target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with part.open("wb") as f:
        shutil.copyfileobj(source, f)
    os.replace(part, target)


def place_file(source: Path, target: Path, link: bool) -> None:
    if link:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
    else:
        with source.open("rb") as f:
            write_stream(f, target)


def extract(archive: Path, wanted: dict[str, Path]) -> None:
    """Extract the named members of an archive (one pass over a tar) to their targets."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member, target in progress(list(wanted.items()), f"extracting from {archive.name}"):
                with zf.open(member) as f:
                    write_stream(f, target)
        return
    remaining = dict(wanted)
    print(f"extracting {len(wanted)} member(s) from {archive} ...")
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name in remaining:
                write_stream(tar.extractfile(member), remaining.pop(member.name))
                if not remaining:
                    break


def place_all(pairs: list[tuple[Found, Path]], link: bool, description: str) -> None:
    """Place many released files: loose ones one by one, archive members grouped per archive."""
    by_archive: dict[Path, dict[str, Path]] = defaultdict(dict)
    loose = []
    for found, target in pairs:
        if found.member is None:
            loose.append((found.path, target))
        else:
            by_archive[found.path][found.member] = target
    for source, target in progress(loose, description):
        place_file(source, target, link)
    for archive, wanted in by_archive.items():
        extract(archive, wanted)


def convert(found: Found, target: Path, converter: Converter) -> str:
    """Run a converter on a released file (extracted to a temporary folder first if archived)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with tempfile.TemporaryDirectory() as tmp:
        source = found.path
        if found.member is not None:
            source = Path(tmp, PurePosixPath(found.member).name)
            extract(found.path, {found.member: source})
        done = converter(source, part)
    os.replace(part, target)
    return f"{done} <- {found}"


# --- converters from other released forms ---------------------------------------------------------


def karpathy_to_lavis_flickr(source: Path, target: Path) -> str:
    """Karpathy's dataset_flickr30k.json -> LAVIS's flickr30k/annotations/test.json (test split)."""
    data = read_retrieval_set(str(source), image_root="flickr30k-images", split="test")
    captions: dict[Path, list[str]] = {image: [] for image in data.images}
    for caption, index in zip(data.captions, data.image_of, strict=True):
        captions[data.images[index]].append(caption)
    target.write_text(json.dumps([{"image": image.as_posix(), "caption": texts} for image, texts in captions.items()]))
    return f"converted the {len(captions)} test images of Karpathy's split to LAVIS's list"


def raw_to_parquet(source: Path, target: Path) -> str:
    """WikiText's wiki.test.raw -> the HF parquet (one row per line, exactly the rows HF's script makes)."""
    import pandas as pd

    rows = read_documents(str(source))
    pd.DataFrame({"text": rows}).to_parquet(target, index=False)
    return f"converted {len(rows)} rows to parquet"


def synset_folder(split: str) -> Gatherer:
    """ImageNet `split` as <wnid>/<image> folders: a raw folder named `split` in that layout; for
    val also the flat ILSVRC2012_val_*.JPEG images (a folder or ILSVRC2012_img_val.tar) sorted by
    Kaggle's LOC_val_solution.csv (read by the project's reader)."""

    def gather(raw: RawDir, target: Path, link: bool) -> str | None:
        folders = [d for d in raw.dirs.get(split, ()) if any(WNID.fullmatch(c.name) for c in d.iterdir())]
        if folders:
            source = max(folders, key=lambda d: shared_tail(d.parts, target.parts))
            if link:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source.resolve(), target_is_directory=True)
            else:
                part = target.with_name(target.name + ".part")
                shutil.copytree(source, part, dirs_exist_ok=True)
                os.replace(part, target)
            return f"{'linked' if link else 'copied'} <- {source}"
        solutions = raw.files.get("LOC_val_solution.csv") if split == "val" else None
        if not solutions:
            return None
        rows = read_loc_val_solution(solutions[0], Path())
        located = [(raw.find((image.name,), (wnid, image.name), ("ILSVRC2012_img_val.tar",)), wnid, image.name)
                   for image, wnid in rows]
        lost = [name for found, _, name in located if found is None]
        if lost:
            raise UserError(f"{len(lost)} of {len(rows)} images of {solutions[0]} are neither under {raw.root} nor "
                            f"in ILSVRC2012_img_val.tar (first: {', '.join(lost[:SHOWN])})")
        part = target.with_name(target.name + ".part")
        place_all([(found, part / wnid / name) for found, wnid, name in located if not (part / wnid / name).exists()],
                  link, "sorting ImageNet val")
        os.replace(part, target)
        return f"sorted {len(rows)} images into <wnid>/ folders by {solutions[0]}"

    return gather


# --- the datasets --------------------------------------------------------------------------------

COCO2014_VAL = "COCO 2014 val images: val2014.zip from https://images.cocodataset.org/zips/val2014.zip"
VQA_DOWNLOAD = "https://visualqa.org/download.html"
OKVQA_DOWNLOAD = "https://okvqa.allenai.org/download.html"
GQA_DOWNLOAD = "https://cs.stanford.edu/people/dorarad/gqa/download.html"
CAPTION_DATASETS = "caption_datasets.zip from https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
HF_C4 = "from the allenai/c4 dataset repo on the Hugging Face hub (https://huggingface.co/datasets/allenai/c4, en/)"
IMAGENET_VAL = ("ImageNet val: ILSVRC2012_img_val.tar (https://image-net.org/download-images) sorted into <wnid>/ "
                "folders (valprep.sh), or its flat ILSVRC2012_val_*.JPEG images with LOC_val_solution.csv from "
                "https://www.kaggle.com/c/imagenet-object-localization-challenge")
IMAGENET_TRAIN = "ImageNet train as <wnid>/ folders (ILSVRC2012_img_train.tar from https://image-net.org, untarred)"


def texts_read(placed: Placed) -> list[Path]:
    """Each present text file yields documents (the eval reads it with read_documents)."""
    for source in filter(None, placed.files):
        if not any(read_documents(source)):
            raise UserError(f"{source} holds no text; download it again")
    return []


def coop_split_images(dataset: str, splits: tuple[str, ...]) -> Callable[[Placed], list[Path]]:
    """The images of the given CoOp splits (eval: test; calib=coop_train: train)."""
    return lambda placed: [path for split in splits for path, _ in read_coop_split(dataset, str(placed.root),
                                                                                   split).items]


#: per CoOp dataset (ImageNet apart): the official archives of its images, and where to get them
COOP_RELEASES = {
    "caltech101": (("101_ObjectCategories.tar.gz",), "101_ObjectCategories.tar.gz (inside caltech-101.zip) from "
                   "https://data.caltech.edu/records/mzrjq-6wc02"),
    "dtd": (("dtd-r1.0.1.tar.gz",), "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    "eurosat": (("EuroSAT.zip",), "EuroSAT.zip (folder 2750/) from http://madm.dfki.de/files/sentinel/EuroSAT.zip"),
    "fgvc_aircraft": (("fgvc-aircraft-2013b.tar.gz",), "fgvc-aircraft-2013b.tar.gz (its data/ folder) from "
                      "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"),
    "food101": (("food-101.tar.gz",), "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"),
    "oxford_flowers": (("102flowers.tgz",), "102flowers.tgz from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "oxford_pets": (("images.tar.gz",), "images.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/"),
    "stanford_cars": (("cars_train.tgz", "cars_test.tgz"), f"cars_train.tgz and cars_test.tgz (Stanford Cars; "
                      f"see {COOP_LAYOUT_URL})"),
    "sun397": (("SUN397.tar.gz",), "SUN397.tar.gz from http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz"),
    "ucf101": (("UCF-101-midframes.zip",), f"UCF-101-midframes.zip from the Google Drive link in {COOP_LAYOUT_URL}"),
}


def coop_dataset(name: str) -> Dataset:
    info = COOP_DATASETS[name]
    archives, source = COOP_RELEASES[name]
    folder = info.dataset_dir
    if name == "fgvc_aircraft":
        files = tuple(File(f"{folder}/{file}", f"{file} in {source}", archives)
                      for file in ("variants.txt", *(f"images_variant_{s}.txt" for s in SPLITS)))
        image_root = f"{folder}/images"
    else:
        split_file = f"split_zhou_{info.coop_name}.json"
        files = (File(f"{folder}/{split_file}", f"{split_file} from the Google Drive link for {info.coop_name} in "
                      f"{COOP_LAYOUT_URL}"),)
        image_root = f"{folder}/{info.image_dir}".rstrip("/")
    return Dataset(f"CoOp {info.coop_name} (train/val/test splits)",
                   f"eval=coop eval.dataset={name}, calib=coop_train calib.dataset={name}", files,
                   coop_split_images(name, SPLITS), Images(image_root, source, archives))


DATASETS: dict[str, Dataset] = {
    "vqav2": Dataset(
        "VQAv2 val", "eval=vqav2",
        (File("vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
              f"v2_Questions_Val_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Questions_Val_mscoco.zip",),
              config="eval/vqav2:questions"),
         File("vqav2/v2_mscoco_val2014_annotations.json",
              f"v2_Annotations_Val_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Annotations_Val_mscoco.zip",),
              config="eval/vqav2:annotations")),
        lambda p: [s.image for s in read_vqa("vqav2", p.images, *p.files)],
        Images("coco/images", COCO2014_VAL, ("val2014.zip",), "eval/vqav2:images")),
    "vqav2_testdev": Dataset(
        "VQAv2 test-dev (answers on EvalAI)", "eval=vqav2_testdev",
        (File("vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json",
              f"v2_Questions_Test_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Questions_Test_mscoco.zip",),
              config="eval/vqav2_testdev:questions"),),
        lambda p: [s.image for s in read_vqa("vqav2", p.images, p.files[0], with_answers=False)],
        Images("coco/images", "COCO 2015 test images: test2015.zip from https://images.cocodataset.org/zips/test2015.zip",
               ("test2015.zip",), "eval/vqav2_testdev:images")),
    "okvqa": Dataset(
        "OK-VQA val", "eval=okvqa",
        (File("okvqa/OpenEnded_mscoco_val2014_questions.json",
              f"OpenEnded_mscoco_val2014_questions.json.zip from {OKVQA_DOWNLOAD}",
              ("OpenEnded_mscoco_val2014_questions.json.zip",), config="eval/okvqa:questions"),
         File("okvqa/mscoco_val2014_annotations.json", f"mscoco_val2014_annotations.json.zip from {OKVQA_DOWNLOAD}",
              ("mscoco_val2014_annotations.json.zip",), config="eval/okvqa:annotations")),
        lambda p: [s.image for s in read_vqa("okvqa", p.images, *p.files)],
        Images("coco/images", COCO2014_VAL, ("val2014.zip",), "eval/okvqa:images")),
    "gqa": Dataset(
        "GQA test-dev balanced", "eval=gqa",
        (File("gqa/testdev_balanced_questions.json", f"questions1.2.zip from {GQA_DOWNLOAD}", ("questions1.2.zip",),
              config="eval/gqa:questions"),),
        lambda p: [s.image for s in read_gqa(p.files[0], p.images)],
        Images("gqa/images", f"images.zip from {GQA_DOWNLOAD}", ("images.zip",), "eval/gqa:images")),
    "nocaps": Dataset(
        "NoCaps val", "eval=nocaps",
        (File("nocaps/nocaps_val_4500_captions.json", "nocaps_val_4500_captions.json from https://nocaps.org/download",
              config="eval/nocaps:annotations"),),
        lambda p: [image.path for image in read_nocaps(p.files[0], p.images)],
        Images("nocaps/val", "each image's coco_url in nocaps_val_4500_captions.json (https://nocaps.org/download), "
               "saved as its file_name", config="eval/nocaps:image_root")),
    "coco_caption": Dataset(
        "COCO captioning, Karpathy test split", "eval=coco_caption",
        (File("coco/annotations/dataset_coco.json", CAPTION_DATASETS, ("caption_datasets.zip",),
              config="eval/coco_caption:annotations"),),
        lambda p: [image.path for image in read_coco_karpathy(p.files[0], p.images, "test")],
        Images("coco/images", COCO2014_VAL, ("val2014.zip",), "eval/coco_caption:image_root")),
    "flickr30k": Dataset(
        "Flickr30k 1k test (retrieval)", "eval=flickr30k, eval=flickr30k_itm",
        (File("flickr30k/annotations/test.json",
              "LAVIS's https://storage.googleapis.com/sfr-vision-language-research/datasets/flickr30k_test.json, or "
              f"Karpathy's dataset_flickr30k.json in {CAPTION_DATASETS}", ("caption_datasets.zip",),
              {"flickr30k_test.json": lambda s, t: "copied LAVIS's list" if shutil.copyfile(s, t) else "",
               "dataset_flickr30k.json": karpathy_to_lavis_flickr}, config="eval/flickr30k:annotations"),),
        lambda p: read_retrieval_set(p.files[0], p.images).images,
        Images("flickr30k/images", "Flickr30k images: flickr30k-images.tar.gz from the form at "
               "https://shannon.cs.illinois.edu/DenotationGraph/",
               ("flickr30k-images.tar.gz", "flickr30k-images.tar", "flickr30k-images.zip"),
               "eval/flickr30k:image_root", by_name=True)),
    **{name: coop_dataset(name) for name in COOP_DATASETS if name != "imagenet"},
    "imagenet": Dataset(
        "CoOp ImageNet (test = val)", "eval=coop eval.dataset=imagenet, calib=coop_train calib.dataset=imagenet",
        (File("imagenet/images/val", IMAGENET_VAL, gather=synset_folder("val")),
         File("imagenet/classnames.txt", f"classnames.txt from the Google Drive link for ImageNet in {COOP_LAYOUT_URL}",
              optional="eval=coop dataset=imagenet when the val images do not cover all 1000 classes (with all "
                       "1000, open_clip's names are used)"),
         File("imagenet/images/train", IMAGENET_TRAIN, optional="calib=coop_train calib.dataset=imagenet",
              gather=synset_folder("train"))),
        coop_split_images("imagenet", ("test",)), Images("imagenet/images/val", IMAGENET_VAL)),
    "imagenet_top1": Dataset(
        "ImageNet val as an ImageFolder (ViT top-1)", "eval=imagenet_top1, calib=image_folder",
        (File("imagenet/val", IMAGENET_VAL, config="eval/imagenet_top1:root", gather=synset_folder("val")),
         File("imagenet/train", IMAGENET_TRAIN, optional="calib=image_folder", config="calib/image_folder:root",
              gather=synset_folder("train"))),
        lambda p: [path for path, _ in image_folder(p.files[0])], Images("imagenet/val", IMAGENET_VAL)),
    "wikitext2": Dataset(
        "WikiText-2 raw test", "eval=wikitext2",
        (File("wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet",
              "wikitext-2-raw-v1/test-00000-of-00001.parquet from the Salesforce/wikitext dataset repo on the Hugging "
              "Face hub (https://huggingface.co/datasets/Salesforce/wikitext), or wikitext-2-raw-v1.zip "
              "(wikitext-2-raw/wiki.test.raw is converted)", ("wikitext-2-raw-v1.zip",),
              {"wikitext-2-raw-v1/test-00000-of-00001.parquet": None, "wikitext-2-raw/wiki.test.raw": raw_to_parquet},
              config="eval/wikitext2:source"),),
        texts_read),
    "c4": Dataset(
        "C4 shards (LLaMA calibration; validation perplexity)", "calib=c4, eval=c4_validation, calib=c4_validation",
        (File("c4/c4-train.00000-of-01024.json.gz", f"en/c4-train.00000-of-01024.json.gz {HF_C4}",
              config="calib/c4:source"),
         File("c4/c4-validation.00000-of-00008.json.gz", f"en/c4-validation.00000-of-00008.json.gz {HF_C4}",
              optional="eval=c4_validation and calib=c4_validation", config="eval/c4_validation:source")),
        texts_read),
    "cc3m": Dataset(
        "CC3M image-caption pairs (BLIP-2 calibration)", "calib=cc3m",
        (File("cc3m/cc3m.tsv", "scripts/prepare_cc3m.py: run `python scripts/prepare_cc3m.py IMG2DATASET_OUTPUT "
              "--out <data root>/cc3m` (its --help says how to download CC3M with img2dataset)",
              config="calib/cc3m:annotations"),),
        lambda p: [path for path, _ in read_pairs(p.files[0])],
        Images("cc3m", "scripts/prepare_cc3m.py (writes the images beside cc3m.tsv)")),
    "coco_captions": Dataset(
        "COCO train2017 captions (calibration pairs)", "calib=coco_captions",
        (File("coco/annotations/captions_train2017.json",
              "annotations_trainval2017.zip from https://images.cocodataset.org/annotations/annotations_trainval2017.zip",
              ("annotations_trainval2017.zip",), config="calib/coco_captions:annotations"),),
        lambda p: [path for path, _ in read_pairs(p.files[0], p.images)],
        Images("coco/train2017", "COCO 2017 train images: train2017.zip from "
               "https://images.cocodataset.org/zips/train2017.zip", ("train2017.zip",),
               "calib/coco_captions:image_root")),
}


# --- preparing one dataset -----------------------------------------------------------------------


def say(status: str, what: object, detail: str = "") -> None:
    print(f"  {status:<9}{what}" + (f"  {detail}" if detail else ""))


def prepare_files(files: tuple[File, ...], root: Path, raw: RawDir | None, link: bool) -> list[bool]:
    """Find or place each file, one line each; True for each one there afterwards. Plain copies are
    placed together, so the members of one archive come out of one pass over it."""
    reports, pending = [], []
    for file in files:
        reports.append(file_report(file, root / file.rel, raw, link, pending))
    place_all(pending, link, "placing files")
    for file, (status, detail) in zip(files, reports, strict=True):
        say(status, root / file.rel, detail)
    return [status in ("found", "placed") for status, _ in reports]


def file_report(file: File, target: Path, raw: RawDir | None, link: bool,
                pending: list[tuple[Found, Path]]) -> tuple[str, str]:
    """(status, detail) of one file; a released copy to place as it is goes to `pending`."""
    if target.exists():
        return "found", ""
    need = f"only for {file.optional}; " if file.optional else ""
    if target.is_symlink():
        return "missing", f"{need}a broken link: remove it and rerun, or put {file.source} there"
    try:
        done = find_and_place(file, target, raw, link, pending) if raw is not None else None
    except UserError as err:
        return "missing", f"{need}{err}"
    if done:
        return "placed", done
    return "optional" if file.optional else "missing", f"{need}get {file.source}"


def find_and_place(file: File, target: Path, raw: RawDir, link: bool, pending: list[tuple[Found, Path]]) -> str | None:
    if file.gather is not None:
        return file.gather(raw, target, link)
    parts = PurePosixPath(file.rel).parts
    for tail, converter in (file.released or {parts[-1]: None}).items():
        found = raw.find(PurePosixPath(tail).parts, parts, file.archives)
        if found is not None and converter is not None:
            return convert(found, target, converter)
        if found is not None:
            pending.append((found, target))
            return f"{'extracted' if found.member else 'linked' if link else 'copied'} <- {found}"
    return None


def prepare_images(images: Images, paths: list[Path], root: Path, raw: RawDir | None, link: bool) -> bool:
    """Find or place every image a reader listed; one summary line; True when all are there."""
    image_root = root / images.rel
    needed = list(dict.fromkeys(paths))
    missing = [p for p in needed if not p.is_file()]
    placed = 0
    if raw is not None and missing:
        located = []
        for path in (p for p in missing if not p.is_symlink()):  # a broken link is the user's: left alone
            rel = path.relative_to(image_root) if path.is_relative_to(image_root) else Path(path.name)
            tail = rel.parts[-1:] if images.by_name else rel.parts
            found = raw.find(tail, path.relative_to(root).parts if path.is_relative_to(root) else tail,
                             images.archives)
            if found is not None:
                located.append((found, path))
        place_all(located, link, f"placing {images.rel} images")
        placed = len(located)
        missing = [p for p in missing if not p.is_file()]
    counts = f"{len(needed)} needed, {len(needed) - placed - len(missing)} found, {placed} placed"
    if missing:
        first = ", ".join(str(p) for p in missing[:SHOWN])
        say("missing", image_root, f"{counts}, {len(missing)} missing (first: {first}): get {images.source}")
        return False
    say("images", image_root, counts)
    return True


def prepare(name: str, root: Path, raw: RawDir | None, link: bool) -> bool:
    """Find, place and read one dataset; True when its eval will read it."""
    dataset = DATASETS[name]
    print(f"{name}: {dataset.title} ({dataset.uses})")
    present = prepare_files(dataset.files, root, raw, link)
    if not all(ok or file.optional for ok, file in zip(present, dataset.files, strict=True)):
        then = f"; then its images under {root / dataset.images.rel}: {dataset.images.source}" if dataset.images else ""
        say("unread", name, f"files are missing (above){then}")
        return False
    files = [str(root / file.rel) if ok else None for ok, file in zip(present, dataset.files, strict=True)]
    image_root = str(root / dataset.images.rel) if dataset.images else ""
    try:
        paths = dataset.read(Placed(root, files, image_root))
    except UserError as err:
        say("invalid", name, str(err))
        return False
    if dataset.images is not None and not prepare_images(dataset.images, paths, root, raw, link):
        return False
    say("ready", name, "read by the project's reader" + (f"; all {len(set(paths))} images there" if paths else ""))
    return True


def list_datasets() -> None:
    for name, dataset in DATASETS.items():
        print(f"{name}: {dataset.title} ({dataset.uses})")
        for file in dataset.files:
            note = f"  (optional: {file.optional})" if file.optional else ""
            print(f"    {file.rel}{'/' if file.gather else ''}{note}\n        from {file.source}")
        if dataset.images is not None and dataset.images.rel not in {file.rel for file in dataset.files}:
            print(f"    {dataset.images.rel}/...  (the images its files list)\n        from {dataset.images.source}")


def default_data_root() -> Path:
    """paths.data_root of configs/config.yaml (env ECOFLAP_DATA, else ${paths.root}/data)."""
    return Path(OmegaConf.load(ROOT / "configs" / "config.yaml").paths.data_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", help=f"one of {', '.join(DATASETS)}, or all")
    parser.add_argument("dirs", nargs="*", metavar="RAW_DIR DATA_ROOT",
                        help="the downloads folder (not with --check) and the data root (default: paths.data_root)")
    parser.add_argument("--check", action="store_true", help="only check DATA_ROOT; no raw dir")
    parser.add_argument("--link", action="store_true", help="symlink files instead of copying them")
    parser.add_argument("--list", action="store_true", help="list the datasets and their layout under the data root")
    args = parser.parse_args(argv)
    if args.list:
        list_datasets()
        return 0
    if args.dataset not in (*DATASETS, "all"):
        parser.error(f"dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)}, or all")
    if len(args.dirs) > (1 if args.check else 2) or (not args.check and not args.dirs):
        parser.error("give RAW_DIR [DATA_ROOT], or --check [DATA_ROOT]")
    raw_dir = None if args.check else Path(args.dirs[0]).expanduser()
    given_root = args.dirs[0 if args.check else 1:]
    root = Path(given_root[0]).expanduser() if given_root else default_data_root()
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    try:
        raw = RawDir(raw_dir) if raw_dir is not None else None
        print(f"data root {root}")
        ready = {name: prepare(name, root, raw, args.link) for name in names}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    incomplete = [name for name, ok in ready.items() if not ok]
    print(f"ready: {', '.join(n for n, ok in ready.items() if ok) or 'none'}"
          + (f"; incomplete: {', '.join(incomplete)} (see above)" if incomplete else ""))
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
