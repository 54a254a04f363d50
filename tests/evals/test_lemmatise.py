"""OK-VQA's lemmatisers: lemminflect, and spaCy (a fake pipeline) on nouns and verbs only."""

import importlib.machinery
import sys
import types

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.lemmatise import LemminflectLemmatiser, make_lemmatiser


@pytest.mark.parametrize(("answer", "expected"), [
    ("skiing", "ski"), ("dogs", "dog"), ("men", "man"), ("puppies.", "puppy."), ("teddy bears", "teddy bear"),
    ("is", "is"),            # AUX reading: kept, as spaCy keeps auxiliaries
    ("red", "red"), ("2", "2"), ("frisbee", "frisbee"),  # no noun/verb change, or unknown: kept
    ("running", "running"),  # a noun reading wins over the verb (spaCy, with context, might say "run")
    ("surfing board", "surf board"),
])
def test_lemminflect_lemmatiser(answer, expected):
    assert LemminflectLemmatiser()([answer]) == [expected]


def fake_spacy(monkeypatch, tagged):
    """A spacy module whose en_core_web_sm tags by a table: word -> (pos, lemma)."""
    token = types.SimpleNamespace

    def nlp_pipe(texts):
        return [[token(text=w, pos_=tagged[w][0], lemma_=tagged[w][1]) for w in t.split()] for t in texts]

    module = types.ModuleType("spacy")
    module.__spec__ = importlib.machinery.ModuleSpec("spacy", None)  # an installed module, to find_spec
    module.load = lambda name: types.SimpleNamespace(pipe=nlp_pipe) if name == "en_core_web_sm" else None
    monkeypatch.setitem(sys.modules, "spacy", module)


def test_spacy_lemmatiser_replaces_nouns_and_verbs_only(monkeypatch):
    """LAVIS's _lemmatize: `token.lemma_ if token.pos_ in ["NOUN", "VERB"] else token.text`, joined by spaces."""
    fake_spacy(monkeypatch, {"dogs": ("NOUN", "dog"), "running": ("VERB", "run"), "are": ("AUX", "be"),
                             "red": ("ADJ", "red"), "Leaves": ("NOUN", "leaf")})
    lemmatiser = make_lemmatiser("spacy")
    assert lemmatiser.name == "spacy"
    assert lemmatiser(["dogs are running", "red Leaves"]) == ["dog are run", "red leaf"]


def test_spacy_lemmatiser_never_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(UserError, match=r'lemmatiser=spacy .* needs spacy, which is not installed; pip install '
                                        r'"ecoflap_exp\[okvqa\]"'):
        make_lemmatiser("spacy")
    fake_spacy(monkeypatch, {})
    sys.modules["spacy"].load = lambda name: (_ for _ in ()).throw(OSError(f"[E050] Can't find model '{name}'"))
    with pytest.raises(UserError, match="needs spaCy's en_core_web_sm model .*E050.*lemmatiser=lemminflect"):
        make_lemmatiser("spacy")
    assert make_lemmatiser("lemminflect").name == "lemminflect"
    assert make_lemmatiser("none") is None
    with pytest.raises(UserError, match="lemmatiser='auto' is unknown"):
        make_lemmatiser("auto")
