"""Perplexity against the reference formula: WikiText-2 and C4 validation protocols, one BOS, a NaN loss."""

import math

import pytest
import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.perplexity import Perplexity
from tests.fixtures_text import C4_DOCS, WIKI_ROWS, bos_tokenizer, write_c4, write_wikitext


def reference_ppl(model, tokenizer, text: str, seqlen: int) -> float:
    """wanda lib/eval.py eval_ppl_wikitext: one tokenisation with special tokens, nsamples =
    numel // seqlen windows, nll_i = CE_i * seqlen, ppl = exp(sum nll / (nsamples * seqlen))."""
    ids = torch.tensor([tokenizer(text).input_ids])
    nsamples = ids.numel() // seqlen
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            window = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(window).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:])
            nlls.append(loss.float() * seqlen)
    return math.exp(torch.stack(nlls).sum().item() / (nsamples * seqlen))


def test_perplexity_equals_the_reference_formula(tiny_llama, tmp_path):
    files = write_wikitext(tmp_path)
    text = "\n\n".join(WIKI_ROWS)
    expected = reference_ppl(tiny_llama.model, tiny_llama.tokenizer, text, seqlen=64)
    # batches of 3 windows (the last one partial) must give the per-window protocol's value
    got = Perplexity(str(files["parquet"]), seqlen=64, batch_size=3).evaluate(tiny_llama)
    assert got == {"ppl": pytest.approx(expected, rel=1e-5)}
    # 1 byte per character, the 3 dashes take 3 bytes (+6), plus the appended EOS: 667 tokens, 10 windows
    assert len(Perplexity(str(files["parquet"]), seqlen=64).token_ids(tiny_llama)) == len(text) + 6 + 1 == 667


def test_one_bos_at_the_start_with_special_tokens(tiny_llama, tmp_path):
    files = write_wikitext(tmp_path)
    tiny_llama.tokenizer = bos_tokenizer(WIKI_ROWS)
    with_bos = Perplexity(str(files["raw"]), seqlen=8).token_ids(tiny_llama)
    plain = Perplexity(str(files["raw"]), seqlen=8, special_tokens=False).token_ids(tiny_llama)
    assert with_bos[0] == 1 and (with_bos == 1).sum() == 1 and torch.equal(with_bos[1:], plain)
    ppl = Perplexity(str(files["raw"]), seqlen=8).evaluate(tiny_llama)["ppl"]
    assert ppl == pytest.approx(reference_ppl(tiny_llama.model, tiny_llama.tokenizer, "\n\n".join(WIKI_ROWS), 8),
                                rel=1e-5)


def test_c4_validation_protocol(tiny_llama, tmp_path):
    shard = write_c4(tmp_path / "c4-validation.00000-of-00008.json.gz")
    ev = Perplexity(str(shard), seqlen=16, joiner=" ", max_documents=2, limit=3)
    # ' '.join of the first 2 documents (the third is left out), cut to 3 windows of 16 tokens
    text = f"{C4_DOCS[0]} {C4_DOCS[1]}"
    assert torch.equal(ev.token_ids(tiny_llama), tiny_llama.tokenize(text, special_tokens=True))
    ids = tiny_llama.tokenize(text, special_tokens=True)[: 3 * 16].view(3, 16)
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(tiny_llama.model(w[None]).logits[0, :-1], w[1:]) for w in ids]
    assert ev.evaluate(tiny_llama)["ppl"] == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-5)


def test_nan_loss_is_a_clear_error(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a" * 200)
    next(tiny_llama.matrices()).weight.fill_(float("nan"))
    with pytest.raises(UserError, match="loss is nan"):
        Perplexity(str(text), seqlen=32).evaluate(tiny_llama)
