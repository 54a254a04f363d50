"""CoOp's 11 zero-shot datasets: readers on fixtures in the released layouts, CoOp's templates, the
zero-shot protocol against a direct computation and an oracle stub, ECoFLaP's train-split
calibration, clear errors, and suite=clip_paper end to end."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image

from ecoflap_exp.data.coop import DATASETS, CoOpCalibration, read_coop_split
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.zero_shot import CoOpZeroShot, class_embeddings, embed_images, template_set
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.runner import run
from tests.fixtures_coop import CLASSES, PER_CLASS, colour_of, write_coop, write_imagenet_flat_val
from tests.integration.test_run import ROOT, config

#: CoOp trainers/zsclip.py CUSTOM_TEMPLATES, keyed by our dataset names (written out independently)
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.", "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.", "sun397": "a photo of a {}.", "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.", "imagenet": "a photo of a {}.",
}


def label_of_colour(image) -> int:
    return round((np.asarray(image)[0, 0, 0] - colour_of(0)) / (colour_of(1) - colour_of(0)))


class OracleCLIP:
    """Image embedding = one-hot of the class its colour encodes (`misread` maps a class to another);
    text embedding = one-hot of the class whose expected prompt it is (anything else fails)."""

    def __init__(self, prompts: list[str], misread: dict[int, int] | None = None):
        self.label_of_prompt = {p: label for label, p in enumerate(prompts)}
        self.misread = misread or {}
        self.texts: list[str] = []

    def image_features(self, images):
        labels = [self.misread.get(label_of_colour(image), label_of_colour(image)) for image in images]
        return F.one_hot(torch.tensor(labels), len(self.label_of_prompt)).float()

    def text_features(self, texts):
        self.texts += texts
        return F.one_hot(torch.tensor([self.label_of_prompt[t] for t in texts]), len(self.label_of_prompt)).float()


def class_names(dataset):
    return [name.replace("_", " ") for name, _ in CLASSES[dataset]]


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_readers_follow_the_released_layouts(tmp_path, dataset):
    expected = write_coop(tmp_path, dataset)
    for split in ("train", "val", "test"):
        read = read_coop_split(dataset, str(tmp_path), split)
        assert read.items == [(path, label) for path, label, _ in expected[split]]
        assert read.classnames == class_names(dataset)
        assert read.template == COOP_TEMPLATES[dataset]
    assert len(read.items) == 3 * PER_CLASS["val" if dataset == "imagenet" else "test"]  # ImageNet: test = val


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_zero_shot_on_an_oracle_is_exact_and_uses_coops_template(tmp_path, dataset):
    write_coop(tmp_path, dataset)
    prompts = [COOP_TEMPLATES[dataset].format(name) for name in class_names(dataset)]
    oracle = OracleCLIP(prompts)
    # labels, class order and prompts all line up only if every image is classified right
    assert CoOpZeroShot(dataset, str(tmp_path), batch_size=4).evaluate(oracle) == {"top1": 100.0}
    assert oracle.texts == prompts
    if dataset == "dtd":  # class 2's images read as class 1: the 2 test images of class 2 are wrong -> 4/6
        wrong = OracleCLIP(prompts, misread={2: 1})
        assert CoOpZeroShot(dataset, str(tmp_path)).evaluate(wrong)["top1"] == pytest.approx(400 / 6)
        # limit: the first 2 test images (both class 0) -> 100
        assert CoOpZeroShot(dataset, str(tmp_path), limit=2).evaluate(wrong)["top1"] == 100.0


@pytest.mark.parametrize("dataset", ["dtd", "fgvc_aircraft", "imagenet"])
def test_zero_shot_equals_a_direct_computation_on_a_tiny_clip(tmp_path, dataset):
    expected = write_coop(tmp_path, dataset)["test"]
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    top1 = CoOpZeroShot(dataset, str(tmp_path), batch_size=4).evaluate(adapter)["top1"]
    with torch.no_grad():
        tokens = adapter.tokenizer([COOP_TEMPLATES[dataset].format(n) for n in class_names(dataset)])
        text = F.normalize(adapter.model.encode_text(tokens), dim=-1)
        pixels = torch.stack([adapter.preprocess(Image.open(path).convert("RGB")) for path, _, _ in expected])
        image = F.normalize(adapter.model.encode_image(pixels), dim=-1)
    # the pipeline's pieces equal the direct ones (random weights predict few distinct classes, so
    # top-1 alone would check little)
    torch.testing.assert_close(embed_images(adapter, [(p, y) for p, y, _ in expected], 4), image)
    torch.testing.assert_close(class_embeddings(adapter, class_names(dataset), [COOP_TEMPLATES[dataset]]), text)
    predicted = (image @ text.t()).argmax(1).tolist()
    correct = sum(p == label for p, (_, label, _) in zip(predicted, expected, strict=True))
    assert top1 == pytest.approx(100 * correct / len(expected))


def test_imagenet_val_as_a_flat_folder_with_loc_val_solution(tmp_path):
    write_coop(tmp_path, "imagenet")
    val, solution, expected = write_imagenet_flat_val(tmp_path / "kaggle")
    read = read_coop_split("imagenet", str(tmp_path), "test", str(val), str(solution))
    assert read.items == expected  # sorted by ImageId; labels = sorted-wnid index via classnames.txt
    assert read.classnames == ["tench", "goldfish", "great white shark"]
    prompts = [f"a photo of a {n}." for n in read.classnames]
    metrics = CoOpZeroShot("imagenet", str(tmp_path), imagenet_val=str(val), imagenet_val_labels=str(solution))
    assert metrics.evaluate(OracleCLIP(prompts)) == {"top1": 100.0}
    synsets = tmp_path / "imagenet" / "images" / "val"  # a valprep-style tree given explicitly
    assert read_coop_split("imagenet", str(tmp_path), "test", str(synsets)).items == \
        read_coop_split("imagenet", str(tmp_path), "test").items


def test_imagenet_without_classnames_txt_uses_open_clips_names(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    (tmp_path / "imagenet" / "images" / "val").mkdir(parents=True)
    solution = tmp_path / "LOC_val_solution.csv"
    wnids = [f"n{9000 - k:08d}" for k in range(1000)]  # listed in descending order: labels follow sorted order
    solution.write_text("ImageId,PredictionString\n" + "".join(f"ILSVRC2012_val_{k:08d},{w} 1 2 3 4\n"
                                                               for k, w in enumerate(wnids)))
    read = read_coop_split("imagenet", str(tmp_path), "test", str(tmp_path / "imagenet" / "images" / "val"),
                           str(solution))
    assert read.classnames == list(IMAGENET_CLASSNAMES)
    assert read.items[0][1] == 999 and read.items[-1][1] == 0  # val_0 holds the largest wnid
    solution.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(UserError, match="cover 1 wnids, not all 1000.*add CoOp's classnames.txt"):
        read_coop_split("imagenet", str(tmp_path), "test", str(tmp_path / "imagenet" / "images" / "val"),
                        str(solution))


def test_missing_and_malformed_files_name_the_problem(tmp_path):
    with pytest.raises(UserError, match=r"'dtd': split file .*split_zhou_DescribableTextures.json does not "
                                        r"exist.*DATASETS.md"):
        read_coop_split("dtd", str(tmp_path))
    with pytest.raises(UserError, match="'imagenet': image folder .*images/val does not exist"):
        read_coop_split("imagenet", str(tmp_path))
    with pytest.raises(UserError, match="'fgvc_aircraft': class list .*variants.txt does not exist"):
        read_coop_split("fgvc_aircraft", str(tmp_path))
    with pytest.raises(UserError, match="CoOp dataset 'cifar10' is unknown"):
        read_coop_split("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="CoOp dataset 'cifar10' is unknown"):  # at config time, before pruning
        CoOpZeroShot("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="apply to the imagenet dataset only"):
        read_coop_split("dtd", str(tmp_path), imagenet_val="x")

    write_coop(tmp_path, "dtd")
    split_file = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(split_file.read_text())
    for edit, message in [(lambda d: d["test"][1].__setitem__(1, "1"), r"entry test\[1\] = .* is not \[image path, "
                                                                       r"integer label, class name\]"),
                          (lambda d: d["val"][0].__setitem__(2, "striped"), "label 0 is named both 'zigzagged' and "
                                                                            r"'striped' \(entry val\[0\]\)"),
                          (lambda d: d.pop("val"), "expected a JSON object with 'train', 'val' and 'test' lists"),
                          (lambda d: [e.__setitem__(1, 3) for s in d.values() for e in s if e[1] == 1],
                           r"labels must run 0..2 with no gaps; missing \[1\]")]:
        broken = json.loads(json.dumps(data))
        edit(broken)
        split_file.write_text(json.dumps(broken))
        with pytest.raises(UserError, match=message):
            read_coop_split("dtd", str(tmp_path))
    split_file.write_text(json.dumps(data))
    (tmp_path / "dtd" / "images" / "banded" / "banded_0020.jpg").unlink()  # the first test image of class 1
    with pytest.raises(UserError, match=r"1 of 6 images of CoOp dataset 'dtd' \(test\) are missing \(first: "
                                        r".*banded_0020.jpg\)"):
        CoOpZeroShot("dtd", str(tmp_path)).evaluate(OracleCLIP([]))

    write_coop(tmp_path, "fgvc_aircraft")
    with (tmp_path / "fgvc_aircraft" / "images_variant_test.txt").open("a") as f:
        f.write("1234567 Boeing 999\n")
    with pytest.raises(UserError, match=r"images_variant_test.txt, line 7: '1234567 Boeing 999' is not"):
        read_coop_split("fgvc_aircraft", str(tmp_path))

    write_coop(tmp_path, "imagenet")
    with (tmp_path / "imagenet" / "classnames.txt").open("a") as f:
        f.write("n99999999\n")
    with pytest.raises(UserError, match=r"classnames.txt, line 4: 'n99999999' is not '<wnid> <class name>'"):
        read_coop_split("imagenet", str(tmp_path))
    bad_csv = tmp_path / "LOC.csv"
    bad_csv.write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(UserError, match="expected the columns ImageId,PredictionString"):
        read_coop_split("imagenet", str(tmp_path), "test", str(tmp_path), str(bad_csv))


def test_template_sets():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    openai = template_set("openai_imagenet", "{} texture.")
    assert len(openai) == 80 and [t.format("cat") for t in openai] == [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(template_set("simple_imagenet")) == 7
    assert template_set("coop", "{} texture.") == ["{} texture."]
    assert template_set(["a {}.", "the {}"]) == ["a {}.", "the {}"]
    with pytest.raises(UserError, match="templates='coop' is unknown; use openai_imagenet, simple_imagenet"):
        template_set("coop")
    with pytest.raises(UserError, match="exactly one '{}'"):
        template_set(["no slot"])


def test_calibration_captions_each_image_with_its_class_prompt(tmp_path):
    expected = write_coop(tmp_path, "oxford_pets")["train"]
    first = CoOpCalibration("oxford_pets", str(tmp_path), num_samples=4, batch_size=2, shuffle=False)
    assert first.kind == "image_captions"
    samples = first.samples(None)
    assert [caption for _, caption in samples] == [
        "a photo of a yorkshire terrier, a type of pet.", "a photo of a yorkshire terrier, a type of pet.",
        "a photo of a abyssinian, a type of pet.", "a photo of a abyssinian, a type of pet."]
    shuffled = CoOpCalibration("oxford_pets", str(tmp_path), num_samples=6, batch_size=2, seed=3)
    pairs = shuffled.samples(None)
    prompts = {label: f"a photo of a {name.replace('_', ' ')}, a type of pet." for _, label, name in expected}
    # each image's colour says its class; its caption must be that class's prompt
    labels = [label_of_colour(image) for image, _ in pairs]
    assert [caption for _, caption in pairs] == [prompts[label] for label in labels]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2] and labels != sorted(labels)  # all 6, in a shuffled order
    again = CoOpCalibration("oxford_pets", str(tmp_path), num_samples=6, batch_size=2, seed=3).samples(None)
    assert [c for _, c in again] == [c for _, c in pairs]
    with pytest.raises(UserError, match=r"gave 6 samples, fewer than the 8 asked for \(calib.num_samples=8"):
        CoOpCalibration("oxford_pets", str(tmp_path), num_samples=8, batch_size=2).batches(None)


def test_one_dataset_and_the_per_dataset_sweep_compose():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        one = compose("config", ["model=clip_tiny", "suite=none", "+eval@evals.dtd=coop", "evals.dtd.dataset=dtd"])
        coupled = compose("config", ["model=clip_tiny", "calib=coop_train", "calib.dataset=eurosat", "suite=none",
                                     "+eval@evals.coop=coop", "evals.coop.dataset=${calib.dataset}"])
        paper = compose("config", ["suite=clip_paper"])
    assert list(one.evals) == ["dtd"] and one.evals.dtd.dataset == "dtd"
    assert coupled.evals.coop.dataset == "eurosat"
    assert {name: ev.dataset for name, ev in paper.evals.items()} == {d: d for d in DATASETS}


@pytest.mark.slow
def test_clip_paper_suite_end_to_end_with_coop_calibration(tmp_path):
    for dataset in DATASETS:
        write_coop(tmp_path / "data", dataset)
    record = run(config(tmp_path, "model=clip_tiny", "calib=coop_train", "calib.dataset=dtd", "calib.num_samples=6",
                        "calib.batch_size=3", "scorer=zeroth", "scorer.num_samples=6", "suite=clip_paper",
                        "sparsity=0.4"))
    assert record.achieved.overall == pytest.approx(0.4, abs=1e-3)
    assert len(set(record.plan.values())) > 1  # zeroth-order scores from the contrastive loss on the prompts
    assert set(record.metrics) == {f"{d}/top1" for d in DATASETS}
    for dataset, value in ((d, record.metrics[f"{d}/top1"]) for d in DATASETS):
        images = 3 if dataset == "imagenet" else 6  # each score is a count of right answers over the test split
        assert value * images / 100 == pytest.approx(round(value * images / 100)), dataset
    # Table 2's point: the suite's one eval follows the calibration's dataset and is named by it
    point = run(config(tmp_path, "model=clip_tiny", "calib=coop_train", "calib.dataset=dtd", "calib.num_samples=6",
                       "calib.batch_size=3", "suite=coop", "sparsity=0.4"))
    assert set(point.metrics) == {"dtd/top1"}
