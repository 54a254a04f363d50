"""BLIP-2 through transformers: Blip2ForConditionalGeneration with FlanT5 or OPT (generation;
prefix language modelling as calibration loss) and Blip2ForImageTextRetrieval (ITC and ITM;
contrastive calibration loss).

Towers in pruning order (ECoFLaP prunes the ViT first, then the language model):
- `vision`: vision_model.encoder.layers (ViT-g: 39 blocks of qkv, projection, fc1, fc2); Wanda
  compares each matrix's weights as a whole there, as the official BLIP-2 pruner does (T5 and the
  Q-Former: per output row);
- `qformer`: qformer.encoder.layer, the query path only (self- and cross-attention,
  intermediate_query, output_query); pruned only when `prune_towers` names it, as the paper
  prunes the ViT and the language model;
- `encoder`, `decoder`: the T5 blocks (language_model.{encoder,decoder}.block), or `decoder`:
  OPT's layers.

The language model's input is built here as LAVIS builds it: the projected query outputs, then
the embedded text (T5: the prompt or caption prefix goes to the encoder and the target to the
decoder; OPT: one sequence, loss on the target only). So no image placeholder tokens are needed
in the vocabulary, and random-init models with any tokenizer work. Texts are padded to the
longest of their batch and the towers' token masks keep the pads out of every statistic, so a
batch gives the statistics its samples give one at a time (the official passes run at batch 1).
Calibration images get LAVIS's `blip2_image_train` view by default (`calibration_augment`), as
ECoFLaP's CC3M calibration does.

`precision=official` holds and runs each part as LAVIS does (models/precision.py): the ViT's Linear
weights in `vit_precision` (LAVIS's yaml key: fp16 for the pre-trained models, fp32 for the COCO
fine-tunes) under fp16 autocast (the retrieval model's ViT: autocast only with fp16 weights, as its
similarity evaluation runs without), its norms and embeddings fp32; the Q-Former and the
projections fp32 without autocast; FlanT5 bf16 (OPT fp16) under its autocast. The projected
queries (fp32) and the embedded text are concatenated as they are, so FlanT5's encoder keeps an
fp32 residual stream, as in LAVIS. `ln_vision` (transformers' post_layernorm) is LAVIS's
LayerNorm of torch's default eps 1e-5 (transformers builds it with the ViT's 1e-6, and a saved
model reloaded by transformers alone takes 1e-6 back). A dtype name holds every part in that dtype.
"""

from __future__ import annotations

import json
import random
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import IGNORE, LossTerm, TransformersAdapter, contrastive_terms
from ecoflap_exp.models.blip_text import blip_caption
from ecoflap_exp.models.loading import CLIP_MEAN, CLIP_STD, load_tokenizer
from ecoflap_exp.models.precision import PartPrecision, apply_precision, held
from ecoflap_exp.models.seam import Batch, Block, BlockInput, Tower, blocks_of, find_block_list, linear_matrices
from ecoflap_exp.options import Count


def square_resize(size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
                  ) -> transforms.Compose:
    """LAVIS's blip_image_eval (and UPop's transform_test): a square bicubic resize (no crop) and
    CLIP's normalisation."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def blip2_image_train(size: int) -> transforms.Compose:
    """LAVIS's blip2_image_train, ECoFLaP's view of its CC3M calibration images: a bicubic random
    resized crop (scale 0.5-1), a random horizontal flip and CLIP's normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def image_batch(images: list[Image.Image], view: transforms.Compose, like: torch.Tensor) -> torch.Tensor:
    """Images through a view, stacked, on the device and in the dtype of `like` (the patch embedding)."""
    return torch.stack([view(image.convert("RGB")) for image in images]).to(like.device, like.dtype)


def interpolated_positions(positions: torch.Tensor, count: int) -> torch.Tensor:
    """ViT position embeddings (1, 1 + side^2, dim) of another image size resized to `count`
    positions: the class token's kept, the patch grid interpolated bicubically (LAVIS's and BLIP's
    interpolate_pos_embed)."""
    dim = positions.shape[-1]
    side, new_side = round((positions.shape[1] - 1) ** 0.5), round((count - 1) ** 0.5)
    grid = positions[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, dim).to(positions.dtype)
    return torch.cat([positions[:, :1], patches], dim=1)


def prefix_split(caption: str, rng: random.Random) -> tuple[str, str]:
    """ECoFLaP's prefix-LM sample: the caption is cut at a random character position drawn from
    [1, len/2]; the prefix is the model's input, the rest its target."""
    cut = rng.randint(1, max(1, len(caption) // 2))
    return caption[:cut], caption[cut:]


def qformer_blocks(layers: nn.ModuleList) -> list[Block]:
    """Q-Former layers with the matrices of the query path; the text branch (`intermediate`,
    `output`) never runs in the generative model, so it has no inputs to prune by. (Neither its
    32 queries nor the image states it attends to hold padding, so its streams need no masks.)"""
    path = "qformer.encoder.layer"
    blocks = []
    for i, layer in enumerate(layers):
        name = f"{path}.{i}"
        matrices = [m for m in linear_matrices(name, layer)
                    if not m.name.removeprefix(name + ".").startswith(("intermediate.", "output."))]
        blocks.append(Block(name, layer, matrices))
    return blocks


def t5_blocks(path: str, layers: nn.ModuleList) -> list[Block]:
    """T5 blocks; in the decoder, the k and v of the cross-attention (found by module type) read
    the encoder's output, the "memory" stream, whose padding is the encoder's."""
    from transformers.models.t5.modeling_t5 import T5LayerCrossAttention

    blocks = blocks_of(path, layers)
    for block in blocks:
        memory = {id(getattr(cross.EncDecAttention, part).weight) for cross in block.module.modules()
                  if isinstance(cross, T5LayerCrossAttention) for part in ("k", "v")}
        block.matrices = [replace(m, stream="memory") if id(m.param) in memory else m for m in block.matrices]
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
        return BlockInput(hidden, tuple(args), inp.kwargs, inp.masks, inp.sizes)

    def passthrough(self, args: tuple, kwargs: dict) -> Any:
        inp = self.split_input(args, kwargs)
        return inp.hidden, inp.args[self.POSITION_BIAS], inp.args[self.CROSS_BIAS]


#: What ECoFLaP's evaluation copies from the pruned BLIP-2 into a COCO-finetuned companion: LAVIS's
#: `visual_encoder` (patch, class and position embeddings, the blocks), not `ln_vision` (which
#: transformers' conversion names vision_model.post_layernorm): the companion keeps its own. The
#: captioner also receives the whole language model (`t5_model`).
VISION_TRANSFER = ("vision_model.embeddings.", "vision_model.encoder.")
LANGUAGE_TRANSFER = ("language_model.",)


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


#: LAVIS's dtype per part (`official`), or one dtype for every part
Precision = Literal["official", "float32", "float16", "bfloat16"]
VitPrecision = Literal["fp16", "fp32"]
#: LAVIS's vit_precision values (blip2_*.yaml)
VIT_PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
#: LAVIS's ln_vision: LayerNorm(visual_encoder.num_features), torch's default eps
LN_VISION_EPS = 1e-5


class InterpolatesPositions(TransformersAdapter):
    """A ViT whose position embeddings from weights of another image size are interpolated over the
    patch grid when loaded (the pretrained 224 px BLIP-2's into its 364 px COCO fine-tunes, as LAVIS
    does; BLIP's load_checkpoint likewise)."""

    def fit_weight(self, name: str, tensor: torch.Tensor, shape: torch.Size, source: str) -> torch.Tensor:
        if not name.endswith("embeddings.position_embedding"):
            return super().fit_weight(name, tensor, shape, source)
        return interpolated_positions(tensor, shape[1])


class Blip2ModelAdapter(InterpolatesPositions):
    """What both BLIP-2 heads share: the options of precision and tokenizer, image preprocessing, the
    vision tower, weight transfer. `precision`: `official` (with LAVIS's `vit_precision`) or a dtype
    (module docstring); `tokenizer`: the checkpoint's, or `bytes` for the tiny architectures."""

    sample_kinds = ("image_captions",)
    calibration_augment = "train"
    has_train_augmentation = True

    @classmethod
    @abstractmethod
    def model_class(cls) -> Any:
        """The transformers class (or Auto class) the model loads through."""

    def __init__(self, precision: Precision = "float32", vit_precision: VitPrecision = "fp16",
                 tokenizer: str | None = None, **common: Any):
        super().__init__(**common)
        self.official_precision = precision == "official"
        self.vit_dtype = VIT_PRECISIONS[vit_precision]
        # in fp32 for precision=official: `hold` casts the parts after
        self.model = self.load_model(self.model_class(), "float32" if self.official_precision else precision)
        self.tokenizer = load_tokenizer(tokenizer or self.checkpoint)
        self.model.vision_model.post_layernorm.eps = LN_VISION_EPS
        size = self.model.config.vision_config.image_size
        self.preprocess = square_resize(size)
        self.train_preprocess = blip2_image_train(size)

    def hold(self, official: dict[str, PartPrecision]) -> None:
        """Each part as LAVIS holds and runs it (`official`) with precision=official, else as loaded;
        the record's `precision` says which."""
        if self.official_precision:
            self.precision = {**apply_precision(self.model, official), "every other part": "fp32, autocast none"}
        else:
            self.precision = held(self.model)

    def vision_tower(self) -> Tower:
        return Tower("vision", blocks_of("vision_model.encoder.layers", self.model.vision_model.encoder.layers),
                     wanda_group="matrix", root=self.model.vision_model, reads=())

    def pixels(self, images: list[Image.Image], augment: bool = False) -> torch.Tensor:
        """Images as the ViT's input: the eval view, or with `augment` LAVIS's training view (its
        randomness from torch's global generator, which the calibration source seeds)."""
        view = self.train_preprocess if augment else self.preprocess
        return image_batch(images, view, self.model.vision_model.embeddings.patch_embedding.weight)

    load_hint = ("transformers.{model_class}.from_pretrained({path!r}); "
                 "transformers.Blip2Processor.from_pretrained({path!r})")

    def save(self, path: Path) -> None:
        """The model and a Blip2Processor (its image transform and tokenizer) that transformers
        loads back alone."""
        self.model.save_pretrained(path)
        size = self.model.config.vision_config.image_size
        processor = transformers.Blip2Processor(
            image_processor=transformers.BlipImageProcessor(size={"height": size, "width": size},
                                                            image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
            tokenizer=self.tokenizer, num_query_tokens=self.model.config.num_query_tokens)
        processor.save_pretrained(path)


class LanguageHead:
    """What BLIP-2's language model decides (T5Head, OPTHead): its precision, towers, how texts become
    tokens and a calibration batch, its logits and loss, generation. The adapter supplies the
    language model's input (queries, then text) and the padding."""

    #: the language model as LAVIS holds and runs it (precision=official)
    precision: PartPrecision
    #: generation prompts padded on the left (a decoder-only model continues from the right end)
    pads_left = False

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def generation(self) -> dict[str, Any]:
        """Generation settings of this language model (the caller's win)."""
        return {}


class T5Head(LanguageHead):
    """FlanT5 (LAVIS's blip2_t5): the prompt or caption prefix goes to the encoder after the queries,
    the target to the decoder (fed the shifted target); texts end in the tokenizer's EOS."""

    # LAVIS: blip2_t5.py casts FlanT5 to bf16 and runs it under bf16 autocast
    precision = PartPrecision(torch.bfloat16, torch.bfloat16, torch.bfloat16)

    def towers(self, adapter: Blip2Adapter) -> list[Tower]:
        lm = adapter.model.language_model
        return [
            T5Tower("encoder", t5_blocks("language_model.encoder.block", lm.encoder.block),
                    token_masks=lambda batch: {"hidden": adapter.language_mask(batch["attention_mask"])},
                    root=lm.encoder, reads=("qformer",)),
            T5Tower("decoder", t5_blocks("language_model.decoder.block", lm.decoder.block),
                    token_masks=lambda batch: {"hidden": batch["decoder_attention_mask"],
                                               "memory": adapter.language_mask(batch["attention_mask"])},
                    root=lm.decoder, reads=("encoder",)),
        ]

    def encode(self, texts: list[str], limit: int | None, bos: bool) -> list[list[int]]:
        return self.tokenizer(texts, truncation=limit is not None, max_length=limit).input_ids

    def text_batch(self, adapter: Blip2Adapter, prefixes: list[str], targets: list[str]) -> Batch:
        batch: Batch = {}
        batch["input_ids"], batch["attention_mask"] = adapter.padded(adapter.encode(prefixes))
        labels, batch["decoder_attention_mask"] = adapter.padded(adapter.encode(targets))
        batch["labels"] = labels.masked_fill(batch["decoder_attention_mask"] == 0, IGNORE)
        return batch

    def logits(self, lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        return lm(inputs_embeds=embeds, attention_mask=mask,
                  decoder_input_ids=lm.prepare_decoder_input_ids_from_labels(labels=batch["labels"]),
                  decoder_attention_mask=batch["decoder_attention_mask"], use_cache=False).logits

    def loss_terms(self, logits: torch.Tensor, batch: Batch) -> list[LossTerm]:
        return [LossTerm(logits, batch["labels"])]


class OPTHead(LanguageHead):
    """OPT (LAVIS's blip2_opt): one sequence after the queries, BOS + prefix + target + newline, the
    loss on the target only; answers end at a newline (LAVIS's eos for VQA)."""

    # LAVIS: blip2_opt.py loads OPT in fp16 and runs it under (fp16) maybe_autocast
    precision = PartPrecision(torch.float16, torch.float16, torch.float16, norms_fp32=True)
    pads_left = True

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        self.newline_id = tokenizer("\n", add_special_tokens=False).input_ids[-1]

    def towers(self, adapter: Blip2Adapter) -> list[Tower]:
        path, layers = find_block_list(adapter.model.language_model)
        return [Tower("decoder", blocks_of(f"language_model.{path}", layers),
                      token_masks=lambda batch: {"hidden": adapter.language_mask(batch["attention_mask"])},
                      reads=("qformer",))]

    def encode(self, texts: list[str], limit: int | None, bos: bool) -> list[list[int]]:
        """Texts start with the tokenizer's BOS when `bos` (as LAVIS's OPT inputs do)."""
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        start = [self.tokenizer.bos_token_id] if bos and self.tokenizer.bos_token_id is not None else []
        return [(start + t)[:limit] for t in ids]

    def text_batch(self, adapter: Blip2Adapter, prefixes: list[str], targets: list[str]) -> Batch:
        heads = adapter.encode(prefixes, bos=True)
        tails = adapter.encode([t + "\n" for t in targets])
        ids = [(h + t)[: adapter.max_text_tokens] for h, t in zip(heads, tails, strict=True)]
        batch: Batch = {}
        batch["input_ids"], batch["attention_mask"] = adapter.padded(ids)
        labels = [([IGNORE] * len(h) + t)[: len(i)] for h, t, i in zip(heads, tails, ids, strict=True)]
        label_ids, _ = adapter.padded(labels)
        batch["labels"] = label_ids.masked_fill(batch["attention_mask"] == 0, IGNORE)
        return batch

    def logits(self, lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        return lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits

    def loss_terms(self, logits: torch.Tensor, batch: Batch) -> list[LossTerm]:
        """OPT predicts token t+1 at position t: the last query position predicts the first text token."""
        first_text = logits.shape[1] - batch["labels"].shape[1]
        return [LossTerm(logits[:, first_text - 1 : -1], batch["labels"])]

    def generation(self) -> dict[str, Any]:
        return {"eos_token_id": self.newline_id}


class Blip2Adapter(Blip2ModelAdapter):
    """Blip2ForConditionalGeneration: `checkpoint` a hub name or folder (Salesforce/blip2-flan-t5-xl,
    Salesforce/blip2-opt-2.7b, the -coco captioners), or `init=random` with a shipped `arch`; its
    language model's choices are a `head` (T5Head, OPTHead). Calibration batches are image-caption
    pairs; each caption is cleaned (blip_caption) and split at a seeded random character for the
    prefix-LM loss, truncated to `max_text_tokens` tokens per side."""

    collate_draws = True
    optional_towers = ("qformer",)

    @classmethod
    def model_class(cls) -> Any:
        return transformers.AutoModelForImageTextToText

    def __init__(self, max_text_tokens: Count = 32, **common: Any):
        super().__init__(**common)
        self.max_text_tokens = max_text_tokens
        self.head = (OPTHead if self.model.config.use_decoder_only_language_model else T5Head)(self.tokenizer)
        # the ViT runs under maybe_autocast() (fp16) in both of LAVIS's models
        self.hold({"vision_model": PartPrecision(self.vit_dtype, torch.float32, torch.float16),
                   "language_model": self.head.precision})
        self.transfer_prefixes = VISION_TRANSFER + LANGUAGE_TRANSFER
        self.split_rng = random.Random(self.seed)

    def all_towers(self) -> list[Tower]:
        return [self.vision_tower(), Tower("qformer", qformer_blocks(self.model.qformer.encoder.layer),
                                           root=self.model.qformer, reads=("vision",)), *self.head.towers(self)]

    def encode(self, texts: list[str], bos: bool = False, truncate: bool = True) -> list[list[int]]:
        """Token ids per text, at most max_text_tokens with `truncate` (calibration; LAVIS never
        truncates evaluation prompts), as the head tokenizes them (`bos`: OPT's BOS first)."""
        return self.head.encode(texts, self.max_text_tokens if truncate else None, bos)

    def padded(self, ids: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids padded to the longest (on the left for generation with a decoder-only model) and the
        mask."""
        width = max(len(t) for t in ids)
        pad = self.tokenizer.pad_token_id or 0
        rows = [([pad] * (width - len(t)) + t) if left else (t + [pad] * (width - len(t))) for t in ids]
        masks = [([0] * (width - len(t)) + [1] * len(t)) if left else ([1] * len(t) + [0] * (width - len(t)))
                 for t in ids]
        return torch.tensor(rows, device=self.device), torch.tensor(masks, device=self.device)

    def seed_collate(self, seed: int) -> None:
        self.split_rng = random.Random(seed)

    def collate(self, samples: list[tuple[Image.Image, str]], augment: bool = False) -> Batch:
        """Calibration pairs -> a batch, texts padded to the longest of the batch (LAVIS's
        padding="longest"); `augment`: the images' training view."""
        prefixes, targets = zip(*(prefix_split(blip_caption(caption), self.split_rng) for _, caption in samples),
                                strict=True)
        return {"pixel_values": self.pixels([image for image, _ in samples], augment),
                **self.head.text_batch(self, list(prefixes), list(targets))}

    def language_mask(self, text_mask: torch.Tensor) -> torch.Tensor:
        """The language model's attention mask: the query outputs (all real), then the text's."""
        queries = torch.ones(len(text_mask), self.model.config.num_query_tokens, dtype=text_mask.dtype,
                             device=text_mask.device)
        return torch.cat([queries, text_mask], dim=1)

    def language_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's input embeddings: projected query outputs, then the embedded text,
        concatenated in the wider of their dtypes (LAVIS's torch.cat of fp32 queries and bf16 text)."""
        queries = self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        text = self.model.language_model.get_input_embeddings()(input_ids)
        return torch.cat([queries, text], dim=1), self.language_mask(attention_mask)

    def forward(self, batch: Batch) -> Any:
        """The language model's logits."""
        embeds, mask = self.language_inputs(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        return self.head.logits(self.model.language_model, embeds, mask, batch)

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """Prefix language modelling: token-mean cross-entropy of the caption's target part."""
        return self.head.loss_terms(self.forward(batch), batch)

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        ids, mask = self.padded(self.encode(prompts, bos=True, truncate=False), left=self.head.pads_left)
        embeds, mask = self.language_inputs(self.pixels(images), ids, mask)
        out = self.model.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                                 **{**self.head.generation(), **generation})
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class Blip2ITMAdapter(Blip2ModelAdapter):
    """Blip2ForImageTextRetrieval (Salesforce/blip2-itm-vit-g, its -coco fine-tune): ITC features
    and ITM scores for retrieval; calibration loss = symmetric contrastive loss of the ITC
    similarities (max over queries) at LAVIS's initial temperature. Only the vision tower is
    pruned: the Q-Former's layers also carry the text branch, which the block-by-block engine's
    one call per block does not fit. `vision_from`: a run record (or saved folder) of a pruned
    BLIP-2 whose ViT replaces this model's, as ECoFLaP evaluates Flickr30k."""

    TEMPERATURE = 0.07

    @classmethod
    def checkpoints(cls, config: Mapping[str, Any]) -> list[str]:
        vision_from = config.get("vision_from")
        return super().checkpoints(config) + ([vision_from] if isinstance(vision_from, str) else [])

    @classmethod
    def model_class(cls) -> Any:
        return transformers.Blip2ForImageTextRetrieval

    def __init__(self, max_text_tokens: Count = 35, vision_from: str | None = None, **common: Any):
        super().__init__(**common)
        self.max_text_tokens = max_text_tokens
        # LAVIS's compute_sim_matrix (the retrieval evaluation) runs without autocast: the COCO model (vit_precision
        # fp32) entirely in fp32; fp16 ViT weights run under maybe_autocast, as its forward
        vit = self.vit_dtype
        self.hold({"vision_model": PartPrecision(vit, torch.float32, torch.float16 if vit == torch.float16 else None)})
        self.transfer_prefixes = VISION_TRANSFER
        if vision_from:
            self.load_weights(saved_state(vision_from), VISION_TRANSFER, vision_from)

    def all_towers(self) -> list[Tower]:
        return [self.vision_tower()]

    def text_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded to max_text_tokens (LAVIS's retrieval texts are), so every batch has one shape."""
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_text_tokens,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def collate(self, samples: list[tuple[Image.Image, str]], augment: bool = False) -> Batch:
        ids, mask = self.text_tokens([blip_caption(caption) for _, caption in samples])
        return {"pixel_values": self.pixels([image for image, _ in samples], augment), "input_ids": ids,
                "attention_mask": mask}

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

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        return contrastive_terms(self.similarity(batch) / self.TEMPERATURE)

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
