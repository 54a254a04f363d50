"""Flickr30k readers: the Karpathy and LAVIS files agree and keep only the test split."""

from ecoflap_exp.data.flickr import read_retrieval_set
from tests.fixtures_flickr import write_flickr30k


def test_flickr_readers_agree_and_keep_only_the_test_split(tmp_path):
    captions = [["Two young guys with shaggy hair.", "Two friends enjoy time outside"],
                ["A man in a blue shirt.", "A worker on a ladder", "Someone painting"],
                ["A dog runs on the beach."]]
    files = write_flickr30k(tmp_path, captions)
    karpathy = read_retrieval_set(str(files["karpathy"]), str(files["karpathy_images"]))
    lavis = read_retrieval_set(str(files["lavis"]), str(files["lavis_images"]))
    assert karpathy == lavis
    assert [p.name for p in karpathy.images] == ["1000092795.jpg", "1000092796.jpg", "1000092797.jpg"]
    assert all(p.is_file() for p in karpathy.images)
    assert karpathy.captions == [c for caps in captions for c in caps]
    assert karpathy.image_of == [0, 0, 1, 1, 1, 2]
    first = karpathy.first_images(2)
    assert (len(first.images), first.captions[-1], first.image_of) == (2, "Someone painting", [0, 0, 1, 1, 1])
    val = read_retrieval_set(str(files["karpathy"]), str(files["karpathy_images"]), split="val")
    assert val.captions == ["a val caption"]
