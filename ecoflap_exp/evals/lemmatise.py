"""OK-VQA's answer lemmatisation (LAVIS's `apply_lemmatizer`): nouns and verbs -> their lemma,
with spaCy's en_core_web_sm as LAVIS (the `okvqa` extra), or lemminflect only when asked for by
name: a missing spaCy model is an error, never a silent change of the numbers."""

from __future__ import annotations

import re

import lemminflect

from ecoflap_exp.errors import UserError
from ecoflap_exp.extras import require

LEMMATISERS = ("spacy", "lemminflect", "none")


class SpacyLemmatiser:
    """LAVIS's: spaCy en_core_web_sm tags each token; NOUN and VERB tokens become their lemma, the
    others stay as written; tokens are re-joined with single spaces."""

    name = "spacy"

    def __init__(self) -> None:
        require("spacy", "okvqa", "lemmatiser=spacy (LAVIS's OK-VQA answer lemmatisation)")
        import spacy

        try:
            self.nlp = spacy.load("en_core_web_sm")
        except OSError as err:
            raise UserError(f"lemmatiser=spacy needs spaCy's en_core_web_sm model ({str(err).splitlines()[0]}); "
                            f"pip install \"ecoflap_exp[okvqa]\" brings it (or `python -m spacy download "
                            f"en_core_web_sm`); lemmatiser=lemminflect approximates it without a tagger (not "
                            f"LAVIS's numbers)") from None

    def __call__(self, answers: list[str]) -> list[str]:
        return [" ".join(t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in doc)
                for doc in self.nlp.pipe(answers)]


class LemminflectLemmatiser:
    """Without a tagger: each whitespace-separated word (surrounding punctuation aside, looked up in
    lower case) becomes lemminflect's first NOUN lemma if the word can be a noun, else its first
    VERB lemma, and stays as written if it can be neither or can be an auxiliary (is, has, does,
    can: spaCy tags those AUX and keeps them). Differences from spaCy: no context, so a word that
    can be a noun keeps the noun reading ("running", "leaves" -> "leave") where spaCy may tag it a
    verb, and words are split on spaces only (spaCy splits "don't" into "do n't")."""

    name = "lemminflect"
    WORD = re.compile(r"^(\W*)(.*?)(\W*)$")

    def lemma(self, word: str) -> str:
        head, core, tail = self.WORD.match(word).groups()
        readings = lemminflect.getAllLemmas(core.lower()) if core else {}
        if "AUX" in readings:
            return word
        for pos in ("NOUN", "VERB"):
            if pos in readings:
                return head + readings[pos][0] + tail
        return word

    def __call__(self, answers: list[str]) -> list[str]:
        return [" ".join(self.lemma(w) for w in answer.split()) for answer in answers]


def make_lemmatiser(choice: str) -> SpacyLemmatiser | LemminflectLemmatiser | None:
    """The lemmatiser named (UserError when spaCy or its model is missing for `spacy`)."""
    if choice not in LEMMATISERS:
        raise UserError(f"lemmatiser={choice!r} is unknown; use one of {', '.join(LEMMATISERS)}")
    if choice == "none":
        return None
    return LemminflectLemmatiser() if choice == "lemminflect" else SpacyLemmatiser()
