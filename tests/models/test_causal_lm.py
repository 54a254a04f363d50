"""causal_lm: next-token loss on shifted ids, an already-loaded model wrapped (its block list found
at LLaMA's or OPT's path), and a wrong block path named."""

import pytest
import torch
import torch.nn.functional as F

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.causal_lm import CausalLMAdapter


def test_the_loss_predicts_each_next_token(tiny_llama, llama_batches):
    batch = llama_batches[0]
    ids = batch["input_ids"]
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=ids).logits
        by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        assert tiny_llama.loss(batch).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert tiny_llama.tokenize("ab").tolist() == tiny_llama.tokenizer("ab", add_special_tokens=False).input_ids


def test_a_loaded_model_is_wrapped_with_its_block_list_found():
    opt = CausalLMAdapter(arch="opt_tiny", init="random", tokenizer="bytes", blocks_path="model.decoder.layers")
    wrapped = CausalLMAdapter.wrapping(opt.model)
    assert wrapped.blocks_path == "model.decoder.layers" and wrapped.name == "OPTForCausalLM"
    assert [b.name for b in wrapped.blocks()] == [b.name for b in opt.blocks()]
    assert CausalLMAdapter.wraps(opt.model) and not CausalLMAdapter.wraps(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="OPTForCausalLM has no block list at model.layers; pass blocks_path="):
        CausalLMAdapter.wrapping(opt.model, blocks_path="model.layers")
    with pytest.raises(UserError, match="model has no module 'model.blocks'; set model.blocks_path"):
        CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", blocks_path="model.blocks").towers()
