"""BLIP's question and caption text processing."""

from ecoflap_exp.models.blip_text import blip_question


def test_blip_question_processor():
    assert blip_question('What is "this" (thing)?!  ') == "what is this thing?"
    assert blip_question("Hi: A.B; c~d#e*f") == "hi ab cdef"
    assert blip_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
