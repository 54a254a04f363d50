"""LAVIS's BLIP text processors, which BLIP-2's numbers depend on: captions (calibration targets,
retrieval texts) and questions (VQA prompts) are cleaned the same way the models saw in training."""

from __future__ import annotations

import re

CAPTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")


def truncate_words(text: str, max_words: int) -> str:
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def blip_caption(caption: str, max_words: int = 50) -> str:
    """`blip_caption`: lower-case, the punctuation . ! " ( ) * # : ; ~ replaced by spaces, runs of
    spaces collapsed, stripped, at most `max_words` words."""
    caption = CAPTION_PUNCTUATION.sub(" ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return truncate_words(caption, max_words)


def blip_question(question: str, max_words: int = 50) -> str:
    """`blip_question`: lower-case, the same punctuation deleted ('?' and ',' are kept), right
    stripped, at most `max_words` words."""
    question = CAPTION_PUNCTUATION.sub("", question.lower()).rstrip(" ")
    return truncate_words(question, max_words)
