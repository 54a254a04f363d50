"""BLIP-2 through transformers: Blip2ForConditionalGeneration with FlanT5 or OPT (generation;
prefix language modelling as calibration loss) and Blip2ForImageTextRetrieval (ITC and ITM;
contrastive calibration loss).

Towers in pruning order (ECoFLaP prunes the ViT first, then the language model):
- `vision`: vision_model.encoder.layers (ViT-g: 39 blocks of qkv, projection, fc1, fc2);
- `qformer`: qformer.encoder.layer, the query path only (self- and cross-attention,
  intermediate_query, output_query); pruned only when `prune_towers` names it, as the paper
  prunes the ViT and the language model;
- `encoder`, `decoder`: the T5 blocks (language_model.{encoder,decoder}.block), or `decoder`:
  OPT's layers.

The language model's input is built here as LAVIS builds it: the projected query outputs, then
the embedded text (T5: the prompt or caption prefix goes to the encoder and the target to the
decoder; OPT: one sequence, loss on the target only). So no image placeholder tokens are needed
in the vocabulary, and random-init models with any tokenizer work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.base import (
    CLIP_MEAN,
    CLIP_STD,
    Batch,
    Block,
    BlockInput,
    ModelAdapter,
    Tower,
    blocks_of,
    contrastive_loss,
    find_block_list,
    linear_matrices,
    load_tokenizer,
    load_transformers_model,
)
from ecoflap_exp.models.blip_text import blip_caption

IGNORE = -100  # label value the cross-entropy skips


def square_resize(size: int) -> transforms.Compose:
    """LAVIS's blip_image_eval: a square bicubic resize (no crop) and CLIP's normalisation."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def prefix_split(caption: str, rng: random.Random) -> tuple[str, str]:
    """ECoFLaP's prefix-LM sample: the caption is cut at a random character position drawn from
    [1, len/2]; the prefix is the model's input, the rest its target."""
    cut = rng.randint(1, max(1, len(caption) // 2))
    return caption[:cut], caption[cut:]


def qformer_blocks(layers: nn.ModuleList) -> list[Block]:
    """Q-Former layers with the matrices of the query path; the text branch (`intermediate`,
    `output`) never runs in the generative model, so it has no inputs to prune by."""
    path = "qformer.encoder.layer"
    blocks = []
    for i, layer in enumerate(layers):
        name = f"{path}.{i}"
        matrices = [m for m in linear_matrices(name, layer)
                    if not m.name.removeprefix(name + ".").startswith(("intermediate.", "output."))]
        blocks.append(Block(name, layer, matrices))
    return blocks


class T5Tower(Tower):
    """T5 blocks are called block(hidden, attention_mask, position_bias, encoder_hidden_states,
    encoder_attention_mask, encoder_decoder_position_bias) and return (hidden, position_bias,
    encoder_decoder_position_bias): block 0 computes the relative position biases (the masks folded
    in) and every later block receives them from its predecessor."""

    POSITION_BIAS, CROSS_BIAS = 1, 4  # positions in BlockInput.args (the arguments after hidden)

    def next_input(self, output: Any, inp: BlockInput) -> BlockInput:
        hidden, position_bias, cross_bias = output
        if len(inp.args) != 5:
            raise RuntimeError(f"{self.name}: T5 blocks were expected to get 6 positional arguments, got "
                               f"{len(inp.args) + 1}; the transformers T5 code changed")
        args = list(inp.args)
        args[self.POSITION_BIAS] = position_bias
        if cross_bias is not None:
            args[self.CROSS_BIAS] = cross_bias
        return BlockInput(hidden, tuple(args), inp.kwargs)

    def passthrough(self, args: tuple, kwargs: dict) -> Any:
        inp = self.split_input(args, kwargs)
        return inp.hidden, inp.args[self.POSITION_BIAS], inp.args[self.CROSS_BIAS]


def saved_state(source: str) -> dict[str, torch.Tensor]:
    """The weights of a model saved by a run: `source` is the run's record (results/runs/<id>.json,
    which names the saved folder) or the saved folder itself (safetensors files)."""
    path = Path(source).expanduser()
    if path.suffix == ".json" and path.is_file():
        record = json.loads(path.read_text())
        if not record.get("saved_model"):
            raise UserError(f"run record {path} has no saved model; rerun that run with save_model=true")
        path = Path(record["saved_model"])
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise UserError(f"{source} is neither a run record with a saved model nor a folder of .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


class Blip2ModelAdapter(ModelAdapter):
    """What both BLIP-2 heads share: image preprocessing, the vision tower, weight transfer."""

    sample_kinds = ("image_captions",)

    def __init__(self, model: nn.Module, tokenizer: Any, max_text_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.preprocess = square_resize(model.config.vision_config.image_size)

    def vision_tower(self) -> Tower:
        return Tower("vision", blocks_of("vision_model.encoder.layers", self.model.vision_model.encoder.layers))

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        return torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device, dtype)

    def fit_weight(self, name: str, tensor: torch.Tensor, shape: torch.Size, source: str) -> torch.Tensor:
        """The ViT's position embeddings of another image size (the pretrained 224 px model's into the
        364 px COCO-finetuned models), interpolated bicubically over the patch grid as LAVIS does."""
        if not name.endswith("embeddings.position_embedding"):
            return super().fit_weight(name, tensor, shape, source)
        dim = tensor.shape[-1]
        side, new_side = round((tensor.shape[1] - 1) ** 0.5), round((shape[1] - 1) ** 0.5)
        grid = tensor[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
        patches = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, dim).to(tensor.dtype)
        return torch.cat([tensor[:, :1], patches], dim=1)

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


class Blip2Adapter(Blip2ModelAdapter):
    """Blip2ForConditionalGeneration: `checkpoint` a hub name or folder (Salesforce/blip2-flan-t5-xl,
    Salesforce/blip2-opt-2.7b, the -coco captioners), or `init=random` with a shipped `arch`.
    `tokenizer`: the checkpoint's, or `bytes` for the tiny architectures. Calibration batches are
    image-caption pairs; each caption is cleaned (blip_caption) and split at a seeded random
    character for the prefix-LM loss, truncated to `max_text_tokens` tokens per side."""

    def __init__(self, arch: str | None = None, checkpoint: str | None = None, init: str = "pretrained",
                 dtype: str = "float32", tokenizer: str | None = None, max_text_tokens: int = 32,
                 prune_towers: list[str] | None = None, seed: int = 0, arch_overrides: dict[str, Any] | None = None):
        model = load_transformers_model(transformers.AutoModelForImageTextToText, arch, checkpoint, init, dtype, seed,
                                        arch_overrides)
        super().__init__(model, load_tokenizer(tokenizer or checkpoint), max_text_tokens)
        self.encoder_decoder = not model.config.use_decoder_only_language_model
        self.split_rng = random.Random(seed)
        names = [t.name for t in self.all_towers()]
        self.prune_towers = list(prune_towers) if prune_towers is not None else [n for n in names if n != "qformer"]
        if not self.encoder_decoder:
            # OPT answers end at a newline (LAVIS's eos for VQA)
            self.newline_id = self.tokenizer("\n", add_special_tokens=False).input_ids[-1]

    def all_towers(self) -> list[Tower]:
        towers = [self.vision_tower(), Tower("qformer", qformer_blocks(self.model.qformer.encoder.layer))]
        lm = self.model.language_model
        if self.encoder_decoder:
            return towers + [T5Tower("encoder", blocks_of("language_model.encoder.block", lm.encoder.block)),
                             T5Tower("decoder", blocks_of("language_model.decoder.block", lm.decoder.block))]
        path, layers = find_block_list(lm)
        return towers + [Tower("decoder", blocks_of(f"language_model.{path}", layers))]

    def encode(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        """Token ids per text, at most max_text_tokens; T5 texts end in the tokenizer's EOS, OPT texts
        start with its BOS when `bos` (as LAVIS's OPT inputs do)."""
        if self.encoder_decoder:
            return self.tokenizer(texts, truncation=True, max_length=self.max_text_tokens).input_ids
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        start = [self.tokenizer.bos_token_id] if bos and self.tokenizer.bos_token_id is not None else []
        return [(start + t)[: self.max_text_tokens] for t in ids]

    def padded(self, ids: list[list[int]], left: bool = False, width: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids padded to `width` or the longest (on the left for generation with a decoder-only
        model) and the mask."""
        width = width or max(len(t) for t in ids)
        pad = self.tokenizer.pad_token_id or 0
        rows = [([pad] * (width - len(t)) + t) if left else (t + [pad] * (width - len(t))) for t in ids]
        masks = [([0] * (width - len(t)) + [1] * len(t)) if left else ([1] * len(t) + [0] * (width - len(t)))
                 for t in ids]
        return torch.tensor(rows, device=self.device), torch.tensor(masks, device=self.device)

    def collate(self, samples: list[tuple[Image.Image, str]]) -> Batch:
        """Calibration pairs -> a batch whose texts are padded to max_text_tokens, so every batch
        has the same shape (block outputs of all samples can be stacked, as the ID scorer does)."""
        width = self.max_text_tokens
        prefixes, targets = zip(*(prefix_split(blip_caption(caption), self.split_rng) for _, caption in samples),
                                strict=True)
        batch: Batch = {"pixel_values": self.pixels([image for image, _ in samples])}
        if self.encoder_decoder:
            batch["input_ids"], batch["attention_mask"] = self.padded(self.encode(list(prefixes)), width=width)
            labels, batch["decoder_attention_mask"] = self.padded(self.encode(list(targets)), width=width)
            batch["labels"] = labels.masked_fill(batch["decoder_attention_mask"] == 0, IGNORE)
            return batch
        # OPT: one sequence BOS + prefix + target + "\n", loss on the target part only
        heads = self.encode(list(prefixes), bos=True)
        tails = self.encode([t + "\n" for t in targets])
        ids = [(h + t)[:width] for h, t in zip(heads, tails, strict=True)]
        batch["input_ids"], batch["attention_mask"] = self.padded(ids, width=width)
        labels = [[IGNORE] * len(h) + t for h, t in zip(heads, tails, strict=True)]
        label_ids, _ = self.padded([row[: len(i)] for row, i in zip(labels, ids, strict=True)], width=width)
        batch["labels"] = label_ids.masked_fill(batch["attention_mask"] == 0, IGNORE)
        return batch

    def language_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's input embeddings: projected query outputs, then the embedded text."""
        queries = self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        text = self.model.language_model.get_input_embeddings()(input_ids)
        embeds = torch.cat([queries.to(text.dtype), text], dim=1)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=attention_mask.dtype, device=self.device),
                          attention_mask], dim=1)
        return embeds, mask

    def forward(self, batch: Batch) -> Any:
        embeds, mask = self.language_inputs(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        lm = self.model.language_model
        if self.encoder_decoder:
            return lm(inputs_embeds=embeds, attention_mask=mask, labels=batch["labels"],
                      decoder_attention_mask=batch["decoder_attention_mask"], use_cache=False)
        queries = torch.full((mask.shape[0], mask.shape[1] - batch["labels"].shape[1]), IGNORE, device=self.device)
        return lm(inputs_embeds=embeds, attention_mask=mask, labels=torch.cat([queries, batch["labels"]], dim=1),
                  use_cache=False)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Prefix language modelling: token-mean cross-entropy of the caption's target part."""
        return self.forward(batch).loss

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        ids, mask = self.padded(self.encode(prompts, bos=True), left=not self.encoder_decoder)
        embeds, mask = self.language_inputs(self.pixels(images), ids, mask)
        if not self.encoder_decoder:
            generation = {"eos_token_id": self.newline_id, **generation}
        out = self.model.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                                 **generation)
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class Blip2ITMAdapter(Blip2ModelAdapter):
    """Blip2ForImageTextRetrieval (Salesforce/blip2-itm-vit-g, its -coco fine-tune): ITC features
    and ITM scores for retrieval; calibration loss = symmetric contrastive loss of the ITC
    similarities (max over queries) at LAVIS's initial temperature. Only the vision tower is
    pruned: the Q-Former's layers also carry the text branch, which the block-by-block engine's
    one call per block does not fit. `vision_from`: a run record (or saved folder) of a pruned
    BLIP-2 whose ViT replaces this model's, as ECoFLaP evaluates Flickr30k."""

    TEMPERATURE = 0.07

    def __init__(self, arch: str | None = None, checkpoint: str | None = None, init: str = "pretrained",
                 dtype: str = "float32", tokenizer: str | None = None, max_text_tokens: int = 35,
                 vision_from: str | None = None, prune_towers: list[str] | None = None, seed: int = 0,
                 arch_overrides: dict[str, Any] | None = None):
        model = load_transformers_model(transformers.Blip2ForImageTextRetrieval, arch, checkpoint, init, dtype, seed,
                                        arch_overrides)
        super().__init__(model, load_tokenizer(tokenizer or checkpoint), max_text_tokens)
        self.prune_towers = prune_towers
        if vision_from:
            self.load_weights(saved_state(vision_from), ("vision_model.",), vision_from)

    def all_towers(self) -> list[Tower]:
        return [self.vision_tower()]

    def text_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded to max_text_tokens (LAVIS's retrieval texts are), so every batch has one shape."""
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_text_tokens,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def collate(self, samples: list[tuple[Image.Image, str]]) -> Batch:
        ids, mask = self.text_tokens([blip_caption(caption) for _, caption in samples])
        return {"pixel_values": self.pixels([image for image, _ in samples]), "input_ids": ids, "attention_mask": mask}

    @torch.no_grad()
    def image_states(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model.vision_model(pixel_values=self.pixels(images)).last_hidden_state

    def queries(self, states: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Q-Former outputs at the query positions, attending to the image states (and to a text)."""
        model = self.model
        query_tokens = model.query_tokens.expand(states.shape[0], -1, -1)
        count = query_tokens.shape[1]
        mask = None
        embeds = query_tokens
        if text_ids is not None:
            embeds = model.embeddings(input_ids=text_ids, query_embeds=query_tokens)
            mask = torch.cat([torch.ones(query_tokens.shape[:2], dtype=text_mask.dtype, device=self.device),
                              text_mask], dim=1)
        out = model.qformer(query_embeds=embeds, query_length=count, attention_mask=mask, encoder_hidden_states=states,
                            encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long, device=self.device))
        return out.last_hidden_state[:, :count]

    @torch.no_grad()
    def features_from_states(self, states: torch.Tensor) -> torch.Tensor:
        return self.query_features(states)

    def query_features(self, states: torch.Tensor) -> torch.Tensor:
        queries = self.queries(states)
        return F.normalize(self.model.vision_projection(queries.to(self.model.vision_projection.weight.dtype)), dim=-1)

    def text_features_of(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        text = self.model.qformer(query_embeds=self.model.embeddings(input_ids=ids), query_length=0,
                                  attention_mask=mask).last_hidden_state
        cls = text[:, 0].to(self.model.text_projection.weight.dtype)
        return F.normalize(self.model.text_projection(cls), dim=-1)

    def similarity(self, batch: Batch) -> torch.Tensor:
        """ITC similarity of every image with every text of the batch: max over the queries."""
        image = self.query_features(self.model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state)
        text = self.text_features_of(batch["input_ids"], batch["attention_mask"])
        return torch.einsum("iqd,td->iqt", image.float(), text.float()).amax(dim=1)

    def forward(self, batch: Batch) -> Any:
        return self.similarity(batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        return contrastive_loss(self.similarity(batch) / self.TEMPERATURE)

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        return self.features_from_states(self.image_states(images))

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.text_features_of(*self.text_tokens(texts))

    @torch.no_grad()
    def itm_scores(self, states: torch.Tensor, texts: list[str]) -> torch.Tensor:
        ids, mask = self.text_tokens(texts)
        queries = self.queries(states, ids, mask)
        logits = self.model.itm_head(queries.to(self.model.itm_head.weight.dtype)).mean(dim=1)
        return logits[:, 1].float()
