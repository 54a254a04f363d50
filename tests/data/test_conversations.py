"""LLaVA conversation files: text-only entries skipped, malformed ones named."""

import pytest

from ecoflap_exp.data.conversations import ConversationCalibration, read_conversations
from ecoflap_exp.errors import UserError
from tests.fixtures import LLAVA_ENTRIES, write_llava_conversations
from tests.models.test_chat import answers_of, make


def test_conversation_file_reader_skips_text_only_entries_and_rejects_malformed_ones(tmp_path):
    path = write_llava_conversations(tmp_path / "llava")
    items = read_conversations(str(path))
    assert [p.relative_to(tmp_path / "llava").as_posix() for p, _ in items] == [
        image for image, _ in LLAVA_ENTRIES if image is not None]
    assert items[0][1][1] == ("gpt", "The bus in the image is white and red.")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "7", "image": "a.jpg", "conversations": [{"from": "bot", "value": "x"}]}]')
    with pytest.raises(UserError, match="entry 0 .id '7'"):
        read_conversations(str(broken))
    with pytest.raises(UserError, match="llava_v1_5_mix665k"):
        read_conversations(str(tmp_path / "missing.json"))
    source = ConversationCalibration(str(path), num_samples=4, batch_size=2, shuffle=False)
    adapter = make("llava_tiny")
    (first, _) = source.batches(adapter)
    assert answers_of(adapter, first)[0] == (" The bus in the image is white and red.</s> The back of the bus "
                                             "features an advertisement.</s>")
