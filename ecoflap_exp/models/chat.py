"""What chat vision-language models through transformers share (LLaVA, Qwen2-VL): calibration
conversations tokenized by the model's own processor and chat template with the loss on the
answer tokens only, the model's own forward, generation from a one-turn chat.

A conversation is an image and its turns, (role, text) pairs with role "human" or "gpt" as
LLaVA's instruction files write them. It is rendered with the processor's chat template, the
image first in the first human turn (LLaVA's preprocessing moves `<image>` there too), and cut
into segments at the template's own boundaries: each prompt (everything up to and including the
assistant header) and each answer (up to and including the template's end of turn). An answer
that does not end in the tokenizer's EOS gets one, right after its last character (llava-hf's
template writes none; LLaVA's training ends every answer with `</s>`). The whole text is
tokenized at once, as LLaVA's training tokenizes a conversation, so every token is the one the
model sees in context (a SentencePiece tokenizer gives a segment that starts with a space an
extra token when it stands alone); an answer's tokens are those between the token counts of the
text up to its start and up to its end, which is the rule of LLaVA's preprocess_v1 (the prompt
through "ASSISTANT:" is not trained on; the answer's tokens and its `</s>` are).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE, LossTerm, TransformersAdapter
from ecoflap_exp.models.loading import resolve_checkpoint
from ecoflap_exp.models.seam import Batch, Block, PrunableMatrix, Tower, blocks_of, find_block_list, linear_matrices
from ecoflap_exp.options import Count

Turns = Sequence[tuple[str, str]]
#: LLaVA-1.5's instruction for short captions (its mix665k data), which turns an image-caption pair
#: (CC3M) into a one-round conversation
CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."
#: per-token keys of a processor's output, padded along the sequence; the others (pixels, image
#: grids) are concatenated along their first dimension
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
ROLES = {"human": "user", "gpt": "assistant"}
#: where LLaVA's instruction files put the image in a turn's text
IMAGE_MARK = "<image>"


def messages_of(turns: Turns, with_image: bool = True) -> list[dict[str, Any]]:
    """Turns as transformers chat messages, the image first in the first human turn."""
    messages = []
    for i, (role, text) in enumerate(turns):
        if role not in ROLES:
            raise UserError(f"conversation turn {i} has role {role!r}; use 'human' or 'gpt' (LLaVA's 'from' values)")
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image and i == 0 else []
        if IMAGE_MARK in text:  # LLaVA's files mark the image in the text; the template places it
            text = text.replace(IMAGE_MARK, "").strip()
        content.append({"type": "text", "text": text})
        messages.append({"role": ROLES[role], "content": content})
    return messages


def checkpoint_processor(tokenizer: str | None, checkpoint: str | None, **settings: Any) -> Any:
    """The processor (tokenizer, image processor, chat template) of `tokenizer` or else the checkpoint."""
    name = tokenizer or checkpoint
    if name is None:
        raise UserError("model.tokenizer is unset and there is no checkpoint to take the processor from")
    try:
        return transformers.AutoProcessor.from_pretrained(resolve_checkpoint(name), **settings)
    except OSError as err:
        raise UserError(f"could not load the processor of {name!r} ({err}); download the checkpoint or use "
                        f"model.tokenizer=bytes with model.init=random") from err


def used_vision_layers(feature_layers: int | list[int], count: int) -> int:
    """How many of a ViT's `count` layers feed the image features: up to the deepest of the model's
    `vision_feature_layer`s (hidden state k is layer k-1's output; 0 is the embeddings')."""
    return max(layer if layer >= 0 else count + 1 + layer for layer in
               ([feature_layers] if isinstance(feature_layers, int) else feature_layers))


class ChatVLMAdapter(TransformersAdapter):
    """A transformers image-text-to-text model with a processor that has a chat template. Subclasses
    load `model` and `processor` and list the towers: vision, projector (pruned only when
    `prune_towers` names it), language."""

    sample_kinds = ("conversations", "image_captions")
    optional_towers = ("projector",)
    load_hint = ("transformers.{model_class}.from_pretrained({path!r}); "
                 "transformers.AutoProcessor.from_pretrained({path!r})")

    model: nn.Module
    processor: Any
    #: the longest calibration sequence in tokens (image tokens included); longer ones are cut at the end
    max_tokens: int = 2048

    def __init__(self, max_tokens: Count = 2048, **common: Any):
        super().__init__(**common)
        self.max_tokens = max_tokens

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def text_start(self) -> str:
        """What the tokenizer puts before a text, as text (LLaMA: its BOS; Qwen2 and ByT5: nothing).
        Texts are tokenized without special tokens and start with it, so no tokenizer appends an
        EOS to a prompt (ByT5's would)."""
        bos = self.tokenizer.bos_token_id
        adds_bos = bos is not None and self.tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]
        return self.tokenizer.bos_token if adds_bos else ""

    @property
    def answer_end(self) -> str | None:
        """The token that ends an answer, appended where the template writes none: the EOS (a
        template whose turns end in a token of their own, Gemma's <end_of_turn>, names that one)."""
        return self.tokenizer.eos_token

    def image_view(self, image: Image.Image) -> Image.Image:
        """An image as the processor receives it (RGB; a model may reshape it first)."""
        return image.convert("RGB")

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def segments(self, turns: Turns) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, is_answer) segments at the template's turn
        boundaries; a last human turn with no answer is dropped."""
        messages = messages_of(turns)
        out: list[tuple[str, bool]] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:k], generation_prompt=True)
            full = self.render(messages[: k + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError("the processor's chat template does not render a conversation as a prefix of its "
                                "continuation, so answer tokens cannot be told apart; use a template that does "
                                "(the checkpoints' own templates of LLaVA-1.5 and Qwen2-VL do)")
            out += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        if not out:
            raise UserError("a calibration conversation has no answer (gpt) turn to compute the loss on")
        return out

    def tokens_up_to(self, text: str, end: int, plain: list[int]) -> int:
        """How many of the whole text's tokens (`plain`) cover text[:end]; UserError when the tokenizer
        merges across that boundary, where an answer's tokens could not be told apart."""
        ids = self.tokenizer(text[:end], add_special_tokens=False).input_ids
        if plain[: len(ids)] != ids:
            raise UserError(f"the tokenizer merges tokens across the boundary of a prompt and its answer "
                            f"({text[max(0, end - 20):end]!r} | {text[end:end + 20]!r}), so the answer's tokens cannot "
                            f"be told apart; use a chat template that ends its prompts where tokens end")
        return len(ids)

    def last_image_token(self, ids: list[int]) -> int:
        """The position of the last image token (UserError when the conversation has none)."""
        found = [i for i, t in enumerate(ids) if t == self.processor.image_token_id]
        if not found:
            raise UserError("a calibration conversation has no image token after the processor; does the chat "
                            "template place the image (model.conversation)?")
        return found[-1]

    def encode(self, image: Image.Image, turns: Turns) -> tuple[dict[str, torch.Tensor], list[int]]:
        """One conversation: the processor's tensors (ids over the whole sequence) and the labels
        (answer ids, IGNORE elsewhere)."""
        eos = self.answer_end
        segments = [(t.rstrip() + eos if answer and eos is not None and eos not in t else t, answer)
                    for t, answer in self.segments(turns)]
        text = self.text_start + "".join(t for t, _ in segments)
        encoded = dict(self.processor(text=[text], images=[image], add_special_tokens=False, return_tensors="pt"))
        ids = encoded["input_ids"][0].tolist()
        plain = self.tokenizer(text, add_special_tokens=False).input_ids
        # the processor expands the image placeholder (in the first prompt, before every answer) into
        # the image's tokens; the rest is tokenized alike
        shift = len(ids) - len(plain)
        after_image = self.last_image_token(plain) + 1
        if ids[after_image + shift:] != plain[after_image:]:
            raise RuntimeError("the processor tokenizes a conversation otherwise than its tokenizer beyond the image "
                               "placeholder; answer tokens cannot be located")
        labels = [IGNORE] * len(ids)
        end = len(self.text_start)
        for segment, answer in segments:
            start, end = end, end + len(segment)
            if answer:
                first = self.tokens_up_to(text, start, plain) + shift
                last = self.tokens_up_to(text, end, plain) + shift
                labels[first:last] = ids[first:last]
        return self.cut(encoded, labels)

    def cut(self, encoded: dict[str, torch.Tensor], labels: list[int]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """At most max_tokens; the image's tokens (all in the first prompt) are never cut."""
        length = encoded["input_ids"].shape[1]
        if length <= self.max_tokens:
            return encoded, labels
        last_image = self.last_image_token(encoded["input_ids"][0].tolist())
        if last_image >= self.max_tokens or all(t == IGNORE for t in labels[: self.max_tokens]):
            raise UserError(f"a calibration conversation needs more than model.max_tokens={self.max_tokens} tokens to "
                            f"reach its first answer ({length} in all); raise model.max_tokens")
        for key in SEQUENCE_KEYS:
            if key in encoded:
                encoded[key] = encoded[key][:, : self.max_tokens]
        return encoded, labels[: self.max_tokens]

    def conversation(self, sample: tuple[Image.Image, Any]) -> tuple[Image.Image, Turns]:
        """A calibration sample as (image, turns): conversations as they are, image-caption pairs
        (CC3M) as one round of LLaVA-1.5's caption instruction and the caption."""
        image, payload = sample
        if isinstance(payload, str):
            return image, [("human", CAPTION_INSTRUCTION), ("gpt", payload)]
        return image, payload

    def collate(self, samples: list[tuple[Image.Image, Any]], augment: bool = False) -> Batch:
        """Conversations -> one batch, padded on the right to the longest; pads and prompts get IGNORE."""
        encoded = [self.encode(self.image_view(image), turns) for image, turns in map(self.conversation, samples)]
        width = max(len(labels) for _, labels in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch: Batch = {}
        for key in encoded[0][0]:
            values = [e[key] for e, _ in encoded]
            if key in SEQUENCE_KEYS:
                fill = pad if key == "input_ids" else 0
                values = [torch.cat([v, torch.full((1, width - v.shape[1]), fill, dtype=v.dtype)], dim=1)
                          for v in values]
            batch[key] = self.joined(key, values)
        batch["labels"] = torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels in encoded])
        return {key: self.placed(key, value) for key, value in batch.items()}

    def joined(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """The samples' tensors of a key that is not per token as the batch's: concatenated along
        their first dimension (a model whose pixels differ in shape between images pads them here)."""
        return torch.cat(values, dim=0)

    def placed(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """On the model's device; pixels in the dtype of the weights."""
        value = value.to(self.device)
        if value.is_floating_point():
            value = value.to(next(self.model.parameters()).dtype)
        return value

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {key: value for key, value in batch.items() if key != "labels"}

    def forward(self, batch: Batch) -> Any:
        return self.model(**self.inputs(batch), use_cache=False).logits

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """Next-token cross-entropy on the answer tokens, mean over them."""
        logits = self.forward(batch)
        return [LossTerm(logits[:, :-1], batch["labels"][:, 1:])]

    def language_mask(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The language model's real tokens: every token but the pads (image tokens included)."""
        return {"hidden": batch["attention_mask"]}

    def projected_towers(self, feature_layers: int | list[int] | None = None,
                         projector_matrices: list[PrunableMatrix] | None = None) -> list[Tower]:
        """The towers of a model laid out as transformers' LLaVA family (model.vision_tower,
        model.multi_modal_projector, model.language_model): the ViT's layers up to the deepest of the
        model's `vision_feature_layer`s (all of them by default; a layer after it computes nothing the
        model reads), the projector as one block (its Linears, or the given matrices), the language
        model's layers."""
        inner = self.model.model
        path, layers = find_block_list(inner.vision_tower)
        vision_layers = None if feature_layers is None else used_vision_layers(feature_layers, len(layers))
        projector = inner.multi_modal_projector
        lm_path, lm_layers = find_block_list(inner.language_model)
        if projector_matrices is None:
            projector_matrices = linear_matrices("model.multi_modal_projector", projector)
        return [
            Tower("vision", blocks_of(f"model.vision_tower.{path}", layers)[:vision_layers], root=inner.vision_tower,
                  reads=()),
            Tower("projector", [Block("model.multi_modal_projector", projector, projector_matrices)], root=projector,
                  reads=("vision",)),
            Tower("language", blocks_of(f"model.language_model.{lm_path}", lm_layers), token_masks=self.language_mask,
                  reads=("projector",)),
        ]

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        """Greedy or beam decoding from a one-turn chat per (image, prompt), left-padded; LAVIS's
        `min_length` counts new tokens here (a decoder-only model's min_length counts the prompt)."""
        texts = [self.text_start + self.render(messages_of([("human", prompt)]), generation_prompt=True)
                 for prompt in prompts]
        # one list of images per prompt, as every processor takes them (Gemma 3's reads a flat list as one prompt's)
        inputs = self.processor(text=texts, images=[[self.image_view(image)] for image in images], padding=True,
                                padding_side="left", add_special_tokens=False, return_tensors="pt")
        inputs = {key: self.placed(key, value) for key, value in inputs.items()}
        generation = {key: value for key, value in generation.items() if value is not None}
        if "min_length" in generation:
            generation["min_new_tokens"] = generation.pop("min_length")
        out = self.model.generate(**inputs, do_sample=False, **generation)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
