"""Image-text retrieval: recall on hand-worked matrices, the BLIP-2 ITC + ITM re-rank on a stub whose
scores are chosen by hand, the CLIP protocol against an independent computation, Flickr30k readers
in Karpathy's and LAVIS's formats, clear errors, and a tiny BLIP-2 ITM end to end."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecoflap_exp.data.flickr import read_retrieval_set
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.retrieval import ImageTextRetrieval, itm_rerank, recall_at_k, similarity
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs
from tests.fixtures_flickr import grey_of, write_flickr30k
from tests.integration.test_run import config


def test_recall_on_a_matrix_worked_by_hand():
    # 3 images x 4 captions; image 0 owns captions 0 and 1, image 1 owns 2, image 2 owns 3
    similarity = torch.tensor([[0.1, 0.9, 0.5, 0.2],    # best caption 1 (own): rank 0
                               [0.8, 0.1, 0.3, 0.9],    # order 3, 0, 2: own caption 2 at rank 2
                               [0.7, 0.2, 0.6, 0.1]])   # order 0, 2, 1, 3: own caption 3 at rank 3
    positives = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert recall_at_k(similarity, positives, (1, 3, 4)) == pytest.approx({1: 100 / 3, 3: 200 / 3, 4: 100.0})
    # captions as queries: c0 -> images [1, 2, 0]: own (0) at rank 2; c1 -> [0, ...]: rank 0;
    # c2 -> [2, 0, 1]: own (1) at rank 2; c3 -> [1, 0, 2]: own (2) at rank 2
    assert recall_at_k(similarity.t(), positives.t(), (1, 2, 3)) == pytest.approx({1: 25.0, 2: 25.0, 3: 100.0})


# The stub's hand-chosen scores. Three images, three captions; caption j describes image j.
# Per image two query features over the three (one-hot) text features; ITC = max over queries:
QUERIES = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.5, 0.3]],     # ITC image 0: [0.9, 0.5,  0.3]
                        [[0.4, 0.6, 0.1], [0.1, 0.2, 0.7]],     # ITC image 1: [0.4, 0.6,  0.7]
                        [[0.8, 0.2, 0.1], [0.0, 0.65, 0.5]]])   # ITC image 2: [0.8, 0.65, 0.5]
ITM = torch.tensor([[0.5, 0.6, 0.0],    # ITM logit of (image i, caption j)
                    [0.0, 1.0, 0.0],
                    [0.0, 0.0, 5.0]])
RAW_CAPTIONS = ["A dog runs.", "Two cats (sleeping)!", "A red car; parked"]
CAPTIONS = ["a dog runs", "two cats sleeping", "a red car parked"]  # after blip_caption
# With k_test=2, image -> text (re-scored = ITM + ITC on each image's 2 best texts by ITC, else -100):
#   image 0: top-2 {c0 .9, c1 .5}  -> c0 1.4, c1 1.1         -> best c0, right (ITM alone would pick c1)
#   image 1: top-2 {c2 .7, c1 .6}  -> c2 0.7, c1 1.6         -> best c1, right (ITC alone: c2)
#   image 2: top-2 {c0 .8, c1 .65} -> c0 0.8, c1 .65, c2 -100 -> best c0, wrong (its ITM 5.0 is cut off)
#   TR@1 = 2/3; ITC only: image 0 right, 1 and 2 wrong -> 1/3.
# text -> image:
#   c0: ITC [.9 .4 .8]  top-2 {i0, i2}  -> i0 1.4, i2 0.8   -> right
#   c1: ITC [.5 .6 .65] top-2 {i2, i1}  -> i2 .65, i1 1.6   -> right (ITC alone: i2)
#   c2: ITC [.3 .7 .5]  top-2 {i1, i2}  -> i1 0.7, i2 5.5   -> right (ITC alone: i1)
#   IR@1 = 3/3; ITC only 1/3. Pairs scored: the union of both top-2 lists = 7 distinct pairs.
I2T_K2 = [[1.4, 1.1, -100.0], [-100.0, 1.6, 0.7], [0.8, 0.65, -100.0]]
T2I_K2 = [[1.4, -100.0, 0.8], [-100.0, 1.6, 0.65], [-100.0, 0.7, 5.5]]


class StubITM:
    """Reads an image's index from its grey level; ITC/ITM scores from the tables above; records
    what the eval asks for. Texts must arrive after blip_caption."""

    def __init__(self):
        self.images_encoded = 0
        self.itm_pairs: list[tuple[int, str]] = []
        self.itm_calls: list[int] = []

    def image_states(self, images):
        self.images_encoded += len(images)
        index = [round((np.asarray(image)[0, 0, 0] - grey_of(0)) / (grey_of(1) - grey_of(0))) for image in images]
        return torch.tensor(index, dtype=torch.float32).view(-1, 1, 1)

    def features_from_states(self, states):
        return QUERIES[states[:, 0, 0].long()]

    def text_features(self, texts):
        return F.one_hot(torch.tensor([CAPTIONS.index(t) for t in texts]), 3).float()

    def itm_scores(self, states, texts):
        images = states[:, 0, 0].long().tolist()
        self.itm_calls.append(len(texts))
        self.itm_pairs += list(zip(images, texts, strict=True))
        return ITM[images, [CAPTIONS.index(t) for t in texts]]


class StubCLIP:
    """The same ITC similarities through image_features (per-query features), without ITM."""

    def __init__(self):
        self.itm = StubITM()

    def image_features(self, images):
        return self.itm.features_from_states(self.itm.image_states(images))

    def text_features(self, texts):
        return self.itm.text_features(texts)


def test_itc_is_the_max_over_queries():
    itc = similarity(QUERIES, torch.eye(3))
    torch.testing.assert_close(itc, torch.tensor([[0.9, 0.5, 0.3], [0.4, 0.6, 0.7], [0.8, 0.65, 0.5]]))


def test_itm_rerank_scores_match_the_hand_worked_matrices():
    stub = StubITM()
    states = torch.arange(3, dtype=torch.float32).view(-1, 1, 1)
    i2t, t2i = itm_rerank(stub, states, CAPTIONS, similarity(QUERIES, torch.eye(3)), k_test=2, itm_batch_size=3)
    torch.testing.assert_close(i2t, torch.tensor(I2T_K2))
    torch.testing.assert_close(t2i, torch.tensor(T2I_K2))
    assert len(stub.itm_pairs) == len(set(stub.itm_pairs)) == 7 and stub.itm_calls == [3, 3, 1]


@pytest.mark.parametrize("fmt", ["karpathy", "lavis"])
def test_itm_protocol_on_flickr_files_differs_from_itc_only(tmp_path, fmt):
    files = write_flickr30k(tmp_path, [[c] for c in RAW_CAPTIONS])
    common = {"annotations": str(files[fmt]), "image_root": str(files[f"{fmt}_images"]),
              "caption_processor": "blip_caption", "batch_size": 2}
    stub = StubITM()
    itm = ImageTextRetrieval(protocol="itm", k_test=2, itm_batch_size=4, **common).evaluate(stub)
    # TR@1 2/3, IR@1 3/3 (worked above); @5 and @10 hold everything among 3 candidates
    assert itm == pytest.approx({"tr@1": 200 / 3, "tr@5": 100.0, "tr@10": 100.0, "ir@1": 100.0, "ir@5": 100.0,
                                 "ir@10": 100.0, "tr_mean": 800 / 9, "ir_mean": 100.0, "r_mean": 850 / 9})
    assert stub.images_encoded == 3 and len(stub.itm_pairs) == 7 and stub.itm_calls == [4, 3]
    assert ImageTextRetrieval(protocol="auto", k_test=2, **common).evaluate(StubITM()) == itm
    # every pair re-ranked (k_test above the set size): image 2 gets its own caption back
    assert ImageTextRetrieval(protocol="itm", **common).evaluate(StubITM())["tr@1"] == 100.0
    itc_only = ImageTextRetrieval(protocol="clip", **common).evaluate(StubCLIP())
    assert (itc_only["tr@1"], itc_only["ir@1"]) == pytest.approx((100 / 3, 100 / 3))
    assert ImageTextRetrieval(protocol="auto", **common).evaluate(StubCLIP()) == itc_only
    with pytest.raises(ValueError, match="is not in list"):  # without blip_caption the stub meets raw text
        ImageTextRetrieval(protocol="itm", **{**common, "caption_processor": None}).evaluate(StubITM())


def test_clip_protocol_equals_an_independent_computation(tmp_path):
    files = write_flickr30k(tmp_path, [["a dog", "a black dog"], ["a red car"], ["two cats", "a cat", "cats"]])
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    metrics = ImageTextRetrieval(str(files["lavis"]), str(files["lavis_images"]), batch_size=2,
                                 ks=(1, 2)).evaluate(adapter)
    data = read_retrieval_set(str(files["lavis"]), str(files["lavis_images"]))
    with torch.no_grad():
        image = F.normalize(adapter.model.encode_image(torch.stack(
            [adapter.preprocess(Image.open(p).convert("RGB")) for p in data.images])), dim=-1)
        text = F.normalize(adapter.model.encode_text(adapter.tokenizer(data.captions)), dim=-1)
    scores = (image @ text.t()).tolist()
    owner = data.image_of

    def best_rank(values, own):  # position of the first own candidate in descending order, ties by index
        order = sorted(range(len(values)), key=lambda c: (-values[c], c))
        return min(order.index(c) for c in own)

    tr = [best_rank(scores[i], [j for j, o in enumerate(owner) if o == i]) for i in range(3)]
    ir = [best_rank([scores[i][j] for i in range(3)], [owner[j]]) for j in range(len(owner))]
    for k in (1, 2):
        assert metrics[f"tr@{k}"] == pytest.approx(100 * sum(r < k for r in tr) / 3)
        assert metrics[f"ir@{k}"] == pytest.approx(100 * sum(r < k for r in ir) / len(ir))


def test_retrieval_runs_on_caption_files(tmp_path):
    adapter = OpenCLIPAdapter("clip_tiny", init="random")
    files = write_caption_pairs(tmp_path, count=6)
    metrics = ImageTextRetrieval(str(files["json"]), batch_size=4).evaluate(adapter)
    assert set(metrics) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "tr_mean", "ir_mean", "r_mean"}
    assert metrics["tr@10"] == metrics["ir@10"] == 100.0  # 6 images, 6 captions: all within 10
    assert metrics == ImageTextRetrieval(str(files["tsv"]), batch_size=3).evaluate(adapter)


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(UserError, match="retrieval annotation file .*missing.json' does not exist; get Karpathy"):
        read_retrieval_set(str(tmp_path / "missing.json"))
    files = write_flickr30k(tmp_path, [["a dog"], ["a cat"]])
    lavis = json.loads(files["lavis"].read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([lavis[0], {"image": "flickr30k-images/x.jpg", "caption": "one string"}]))
    with pytest.raises(UserError, match=r"entry 1 = .* is not \{'image': path, 'caption': \[strings\]\}"):
        read_retrieval_set(str(bad))
    karpathy = json.loads(files["karpathy"].read_text())
    del karpathy["images"][3]["sentences"][0]["raw"]
    bad.write_text(json.dumps(karpathy))
    with pytest.raises(UserError, match=r"images\[3\] is not a Karpathy entry .*missing 'raw'"):
        read_retrieval_set(str(bad))
    with pytest.raises(UserError, match="no image has split 'testing'"):
        read_retrieval_set(str(files["karpathy"]), split="testing")
    bad.write_text("[{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_retrieval_set(str(bad))
    with pytest.raises(UserError, match="protocol='itc' is unknown; use one of clip, itm, auto"):
        ImageTextRetrieval(str(bad), protocol="itc")
    with pytest.raises(UserError, match="caption_processor='lower' is unknown"):
        ImageTextRetrieval(str(bad), caption_processor="lower")
    (files["karpathy_images"] / "1000092796.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 2 images of retrieval set .* are missing \(first: .*1000092796.jpg"):
        ImageTextRetrieval(str(files["lavis"]), str(files["lavis_images"])).evaluate(StubCLIP())


@pytest.mark.slow
def test_tiny_blip2_itm_run_with_the_flickr_itm_eval(tmp_path):
    write_flickr30k(tmp_path / "data", [["A dog runs.", "a brown dog"], ["Two cats!"], ["a red car", "a car"]])
    pairs = write_caption_pairs(tmp_path / "pairs", count=8)
    record = run(config(tmp_path, "model=blip2_itm_tiny", "calib=cc3m", f"calib.annotations={pairs['tsv']}",
                        "calib.num_samples=8", "calib.batch_size=4", "suite=none",
                        "+eval@evals.flickr30k=flickr30k_itm", "evals.flickr30k.k_test=2", "sparsity=0.5"))
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
    metrics = {k.removeprefix("flickr30k/"): v for k, v in record.metrics.items()}
    assert set(metrics) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "tr_mean", "ir_mean", "r_mean"}
    assert metrics["tr@10"] == metrics["ir@10"] == 100.0  # 3 images, 5 captions: everything within 10
    assert metrics["ir@1"] * 5 / 100 == pytest.approx(round(metrics["ir@1"] * 5 / 100))  # a count over 5 captions
