"""Decoder-only causal language models through transformers (LLaMA family; OPT from the same code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import LossTerm, TransformersAdapter
from ecoflap_exp.models.loading import DType, load_tokenizer
from ecoflap_exp.models.seam import Batch, Tower, blocks_of


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise UserError(f"model has no module {path!r}; set model.blocks_path to its block list") from err


def getattr_path(model: nn.Module, path: str) -> Any:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


class CausalLMAdapter(TransformersAdapter):
    """LlamaForCausalLM, OPTForCausalLM and their kin: one tower of decoder blocks.

    `blocks_path` names the ModuleList of decoder blocks (LLaMA: model.layers, OPT:
    model.decoder.layers). The tokenizer is the checkpoint's, or `tokenizer=bytes` (ByT5's byte
    tokenizer, needs no files) for the shipped tiny architectures.
    """

    sample_kinds = ("tokens",)

    def __init__(self, dtype: DType = "float32", blocks_path: str = "model.layers", tokenizer: str | None = None,
                 **common: Any):
        super().__init__(**common)
        self.blocks_path = blocks_path
        self.model = self.load_model(transformers.AutoModelForCausalLM, dtype)
        self.tokenizer = load_tokenizer(tokenizer or self.checkpoint)
        vocab = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise UserError(f"tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary is {vocab}")

    @classmethod
    def wraps(cls, model: nn.Module) -> bool:
        return type(model).__name__.endswith("ForCausalLM")

    @classmethod
    def wrapping(cls, model: nn.Module, tokenizer: Any = None, blocks_path: str | None = None,
                 name: str = "") -> CausalLMAdapter:
        """`tokenizer` is needed only to tokenize text (calibration given as token ids needs none);
        `blocks_path` defaults to model.layers (LLaMA, Mistral, Qwen2) or model.decoder.layers (OPT)."""
        adapter = cls.__new__(cls)
        adapter.name = name or type(model).__name__
        adapter.model = model.eval()
        adapter.tokenizer = tokenizer
        candidates = [blocks_path] if blocks_path else ["model.layers", "model.decoder.layers"]
        found = [path for path in candidates if isinstance(getattr_path(model, path), nn.ModuleList)]
        if not found:
            raise UserError(f"{type(model).__name__} has no block list at {' or '.join(candidates)}; pass "
                            f"blocks_path=<the ModuleList of its decoder blocks>")
        adapter.blocks_path = found[0]
        return adapter

    def all_towers(self) -> list[Tower]:
        return [Tower("decoder", blocks_of(self.blocks_path, get_submodule(self.model, self.blocks_path)))]

    def tokenize(self, text: str, special_tokens: bool = False) -> torch.Tensor:
        """The whole text as one 1-D tensor of token ids."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=special_tokens).input_ids, dtype=torch.long)

    def transformers_lm(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def collate(self, samples: list[torch.Tensor]) -> Batch:
        return {"input_ids": torch.stack(samples).to(self.device)}

    def forward(self, batch: Batch) -> Any:
        return self.model(input_ids=batch["input_ids"], use_cache=False)

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """Next-token cross-entropy, mean over predicted tokens."""
        ids = batch["input_ids"]
        logits = self.model(input_ids=ids, use_cache=False).logits
        return [LossTerm(logits[:, :-1], ids[:, 1:])]

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
