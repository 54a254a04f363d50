"""raw_files: a released file found loose or inside an archive (the copy whose path best matches the
target's), and placed through a .part file."""

import zipfile

import pytest

from ecoflap_exp.data.raw_files import Found, RawDir, place_all, shared_tail
from ecoflap_exp.errors import UserError


def test_files_are_found_loose_first_else_in_the_named_archive_and_placed(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "a" / "val").mkdir(parents=True)
    (raw / "b" / "test").mkdir(parents=True)
    (raw / "a" / "val" / "q.json").write_text("val")
    (raw / "b" / "test" / "q.json").write_text("test")
    with zipfile.ZipFile(raw / "release.zip", "w") as zf:
        zf.writestr("release/images/1.jpg", b"one")
        zf.writestr("release/images/2.jpg", b"two")
    found = RawDir(raw)
    assert found.find(("q.json",), ("data", "test", "q.json")) == Found(raw / "b" / "test" / "q.json")
    assert found.find(("val", "q.json"), ("data", "test", "q.json")) == Found(raw / "a" / "val" / "q.json")
    member = found.find(("images", "2.jpg"), ("images", "2.jpg"), ("release.zip",))
    assert member == Found(raw / "release.zip", "release/images/2.jpg")
    assert str(member) == f"{raw / 'release.zip'}:release/images/2.jpg"
    assert found.find(("3.jpg",), ("3.jpg",), ("release.zip",)) is None
    out = tmp_path / "out"
    place_all([(member, out / "images" / "2.jpg"), (found.find(("q.json",), ("val", "q.json")), out / "q.json")],
              link=False, description="placing")
    assert (out / "images" / "2.jpg").read_bytes() == b"two" and (out / "q.json").read_text() == "val"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["2.jpg", "q.json"]  # no .part left


def test_shared_tail_counts_the_common_trailing_parts_and_a_missing_raw_dir_is_named(tmp_path):
    assert shared_tail(("x", "val", "q.json"), ("data", "val", "q.json")) == 2
    assert shared_tail(("a",), ("b",)) == 0
    with pytest.raises(UserError, match="raw dir .*nowhere is not a folder"):
        RawDir(tmp_path / "nowhere")
