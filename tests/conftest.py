import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402


@pytest.fixture
def tiny_llama() -> CausalLMAdapter:
    return CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=0)


@pytest.fixture
def llama_batches(tiny_llama: CausalLMAdapter) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (8, 32), generator=g)
    return [tiny_llama.collate(list(ids[i : i + 4])) for i in (0, 4)]
