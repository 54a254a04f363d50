"""data.files: a data file's text read as released (a spreadsheet's BOM dropped), another encoding,
a broken JSON line and a missing image each named in one message."""

import pytest

from ecoflap_exp.data.files import check_images_exist, read_jsonl_file, read_text
from ecoflap_exp.errors import UserError


def test_a_bom_is_dropped_and_latin1_is_named_with_the_byte_and_the_file(tmp_path):
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(b"\xef\xbb\xbfimage\tcaption\n")
    assert read_text(bom) == "image\tcaption\n"
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("un caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"^{latin} is not UTF-8 \(byte 0xe9 at offset 6; .*re-save it as UTF-8, "
                                        r"e.g. `iconv -f latin1 -t utf-8 latin.tsv > fixed_latin.tsv`$"):
        read_text(latin)


def test_a_jsonl_line_that_does_not_parse_is_named_by_number_and_missing_images_are_counted(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(UserError, match=r"rows file '.*rows.jsonl', line 4, is not valid JSON .*\(get it\)"):
        read_jsonl_file(str(rows), "rows file", "get it")
    rows.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl_file(str(rows), "rows file", "get it") == [{"a": 1}, {"a": 2}]
    (tmp_path / "here.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"^1 of 2 test images are missing \(first: .*gone.jpg\); put them there$"):
        check_images_exist([tmp_path / "here.jpg", tmp_path / "gone.jpg"], "test images", "put them there")
