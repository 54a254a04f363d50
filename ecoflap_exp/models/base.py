"""The model adapter: the one seam between models and methods.

Methods (scorers, pruners, the engine, evals) see a model only through these types:
- a `PrunableMatrix` is a 2-D weight (a parameter, or a row slice of one such as the q/k/v parts
  of a fused in_proj) plus the module whose forward input is that matrix's input;
- a `Block` is one transformer block and its prunable matrices;
- a `Tower` is an ordered list of blocks that feed each other (vision encoder, text decoder...);
- a `ModelAdapter` loads the model, lists its towers in pruning order, turns raw calibration
  samples into batches, computes the calibration loss and serves the evals.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ecoflap_exp.errors import UserError

Batch = dict[str, Any]
#: Wanda's comparison group: the weights of one output row, or of the whole matrix
Group = Literal["row", "matrix"]
#: the target value a cross-entropy skips (padding, prompt tokens)
IGNORE = -100
#: the image normalisation of OpenAI's CLIP, which BLIP-2's vision encoder shares
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The input of an nn.Linear-like module: its first positional argument."""
    return args[0] if args else next(iter(kwargs.values()))


@dataclass(eq=False)
class PrunableMatrix:
    """`stream` names the token sequence the matrix reads, so the right token mask selects its
    real tokens: "hidden" (the block's own tokens) or "memory" (the states a cross-attention
    reads, e.g. the encoder output the T5 decoder's cross-attention k and v take)."""

    name: str
    param: nn.Parameter
    input_module: nn.Module
    rows: slice = field(default_factory=lambda: slice(None))
    input_of: Callable[[tuple, dict], torch.Tensor] = first_input
    stream: str = "hidden"

    @property
    def weight(self) -> torch.Tensor:
        """A view of the matrix inside its parameter; writes go to the model."""
        return self.param.data[self.rows]

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight.shape
        return rows, cols

    @property
    def numel(self) -> int:
        return self.weight.numel()


@dataclass(eq=False)
class Block:
    name: str
    module: nn.Module
    matrices: list[PrunableMatrix]

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)


@dataclass
class BlockInput:
    """What one calibration batch hands a block: hidden states plus every other argument, and the
    masks (batch, tokens; True = a real token) of the token streams that hold padding. A stream
    without a mask is all real tokens."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def linear_matrices(prefix: str, block: nn.Module) -> list[PrunableMatrix]:
    """Every nn.Linear inside a block, found by type (not by name, since names change between
    library versions), in module order."""
    return [
        PrunableMatrix(f"{prefix}.{name}", module.weight, module)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]


@dataclass
class LossTerm:
    """One cross-entropy of a calibration loss: logits (..., classes) against integer targets
    (...); targets equal to IGNORE are skipped."""

    logits: torch.Tensor
    targets: torch.Tensor


def contrastive_terms(logits_per_image: torch.Tensor) -> list[LossTerm]:
    """CLIP's symmetric loss with in-batch negatives: image->text and text->image cross-entropies."""
    targets = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return [LossTerm(logits_per_image, targets), LossTerm(logits_per_image.t(), targets)]


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """The model's stack of transformer blocks: the longest ModuleList (or Sequential, as timm's)
    whose entries all hold Linear layers, so a library renaming its modules does not break it."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) > 0
        and all(any(isinstance(m, nn.Linear) for m in entry.modules()) for entry in module)
    ]
    if not candidates:
        raise UserError(f"{type(model).__name__} has no list of blocks with Linear layers to prune")
    return max(candidates, key=lambda item: len(item[1]))


def blocks_of(path: str, layers: nn.ModuleList | nn.Sequential) -> list[Block]:
    return [Block(f"{path}.{i}", layer, linear_matrices(f"{path}.{i}", layer)) for i, layer in enumerate(layers)]


class Tower:
    """An ordered stack of blocks; block i's output is block i+1's hidden-state input.

    The default plumbing suits blocks called as `block(hidden, **kwargs)` that return the new
    hidden states (or a tuple that starts with them) and take the same keyword arguments at every
    depth. A model whose blocks hand more than hidden states down (T5's position bias) overrides
    `next_input`.

    The official code's per-tower choices travel with the tower: `wanda_group`, the comparison
    group Wanda uses here unless the run overrides it (ECoFLaP: BLIP-2's EVA ViT per whole
    matrix; T5, CLIP, LLaMA per output row), and `token_masks(batch)`, which of a batch's tokens
    are real in each stream the blocks read ({} when there is no padding), so pads never enter
    input statistics.
    """

    def __init__(self, name: str, blocks: list[Block], wanda_group: Group = "row",
                 token_masks: Callable[[Batch], dict[str, torch.Tensor]] | None = None):
        self.name = name
        self.blocks = blocks
        self.wanda_group = wanda_group
        self._token_masks = token_masks

    def token_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: v.bool() for k, v in self._token_masks(batch).items()} if self._token_masks else {}

    def split_input(self, args: tuple, kwargs: dict) -> BlockInput:
        if args:
            return BlockInput(args[0], args[1:], dict(kwargs))
        kwargs = dict(kwargs)
        return BlockInput(kwargs.pop("hidden_states"), (), kwargs)

    def run_block(self, block: Block, inp: BlockInput) -> Any:
        return block.module(inp.hidden, *inp.args, **inp.kwargs)

    def next_input(self, output: Any, inp: BlockInput) -> BlockInput:
        hidden = output[0] if isinstance(output, tuple | list) else output
        return BlockInput(hidden, inp.args, inp.kwargs, inp.masks)

    def passthrough(self, args: tuple, kwargs: dict) -> Any:
        """What a block returns when it is skipped (its result is not needed): something shaped
        like its real output, here its own hidden-state input."""
        return self.split_input(args, kwargs).hidden


class ModelAdapter(ABC):
    """One model family. Subclasses set `self.model` in __init__ and implement the methods."""

    model: nn.Module
    #: the kinds of raw calibration samples `collate` accepts (see CalibrationSource.kind)
    sample_kinds: tuple[str, ...] = ()
    #: names of the towers this run prunes (None: all); the model config's `prune_towers`
    prune_towers: list[str] | None = None
    #: the view of calibration images the official code uses with this model, which an image
    #: calibration's `augment` defaults to: "eval" (the eval transform) or "train" (the model's
    #: training augmentation)
    calibration_augment: str = "eval"
    #: whether `collate(samples, augment=True)` applies a training augmentation to the images
    has_train_augmentation: bool = False
    #: the weights (name prefixes) this model receives from a pruned model when it serves as a
    #: companion of an evaluation (evals.base.OnCompanion), as the official evaluation copies them
    transfer_prefixes: tuple[str, ...] = ()

    @abstractmethod
    def all_towers(self) -> list[Tower]:
        """Every tower of the model, in pruning order."""

    def towers(self) -> list[Tower]:
        """The towers to prune (those named in `prune_towers`), in pruning order."""
        towers = self.all_towers()
        if self.prune_towers is None:
            return towers
        names = [t.name for t in towers]
        unknown = [name for name in self.prune_towers if name not in names]
        if unknown or not self.prune_towers:
            raise UserError(f"model.prune_towers={list(self.prune_towers)} must name some of {type(self).__name__}'s "
                            f"towers: {', '.join(names)}")
        return [t for t in towers if t.name in self.prune_towers]

    @abstractmethod
    def collate(self, samples: list[Any]) -> Batch:
        """Raw calibration samples (strings, (image, label) pairs, ...) -> one model batch."""

    @abstractmethod
    def forward(self, batch: Batch) -> Any:
        """Run the model on a batch (the engine uses it to reach each tower's first block)."""

    @abstractmethod
    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """The calibration loss of a batch as cross-entropies (their mean is the loss): logits in
        the model's dtype, targets."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """The calibration loss (gradient and zeroth-order scores): the mean of the terms'
        cross-entropies, each computed and reduced in fp32 from upcast logits whatever the
        weights' dtype, as the official code's autocast does. A bf16 loss moves in steps of
        about 0.016 near 2-3, which zeroth-order differences L(W + eps z) - L(W - eps z) cannot
        resolve."""
        losses = [F.cross_entropy(t.logits.float().reshape(-1, t.logits.shape[-1]), t.targets.reshape(-1),
                                  ignore_index=IGNORE) for t in self.loss_terms(batch)]
        return torch.stack(losses).mean()

    @abstractmethod
    def save(self, path: Path) -> None:
        """Save the (pruned) weights in the library's own format."""

    @classmethod
    def supports(cls, method: str) -> bool:
        """Whether this adapter implements an optional method (tokenize, logits, ...)."""
        return getattr(cls, method) is not getattr(ModelAdapter, method)

    def tokenize(self, text: str, special_tokens: bool = False) -> torch.Tensor:
        """Text -> 1-D token ids (language models; used by text calibration and perplexity); with
        `special_tokens`, as the tokenizer's defaults add them (LLaMA: one BOS first)."""
        raise UserError(f"{type(self).__name__} has no tokenizer; text calibration and perplexity need a "
                        f"language model")

    def logits(self, batch: Batch) -> torch.Tensor:
        """Class logits of a batch (classifiers; used by top-1 accuracy)."""
        raise UserError(f"{type(self).__name__} has no classifier head; top-1 accuracy needs an image classifier")

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings of images (image-text models; zero-shot and retrieval)."""
        raise UserError(f"{type(self).__name__} has no image-text embeddings; this eval needs a CLIP-style model")

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings of texts (image-text models; zero-shot and retrieval)."""
        raise UserError(f"{type(self).__name__} has no image-text embeddings; this eval needs a CLIP-style model")

    def generate(self, images: list[Image.Image], prompts: list[str], **generation: Any) -> list[str]:
        """The text generated for each (image, prompt) pair (VQA answers, captions), decoded and
        stripped. `generation` holds decoding settings in LAVIS's terms: num_beams, max_new_tokens,
        min_length, length_penalty, repetition_penalty (generative image-text models)."""
        raise UserError(f"{type(self).__name__} does not generate text from images; this eval needs a "
                        f"generative image-text model (BLIP-2)")

    def image_states(self, images: list[Image.Image]) -> torch.Tensor:
        """Vision-encoder outputs (images, tokens, width): what `features_from_states` and
        `itm_scores` read, computed once per image (image-text matching models)."""
        raise UserError(f"{type(self).__name__} has no image-text matching head; this eval needs BLIP-2 ITM")

    def features_from_states(self, states: torch.Tensor) -> torch.Tensor:
        """L2-normalised contrastive (ITC) features (images, queries, dim) of `image_states`; an
        image's similarity to a text is the maximum over its queries."""
        raise UserError(f"{type(self).__name__} has no image-text matching head; this eval needs BLIP-2 ITM")

    def itm_scores(self, states: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Image-text matching logit (of the "match" class, averaged over the queries) of each of K
        pairs (states[k], texts[k]): a tensor of K scores."""
        raise UserError(f"{type(self).__name__} has no image-text matching head; this eval needs BLIP-2 ITM")

    def load_weights(self, state: dict[str, torch.Tensor], prefixes: Sequence[str], source: str) -> int:
        """Copy the entries of `state` (another model's weights, named as in this model) whose names
        start with one of `prefixes` into this model; returns how many. This is how a pruned
        model's towers reach a companion model (ECoFLaP's COCO-finetuned captioner and retrieval
        model receive the pruned ViT and language model)."""
        own = self.model.state_dict()
        copied = 0
        for name, tensor in state.items():
            if not name.startswith(tuple(prefixes)):
                continue
            if name not in own:
                raise UserError(f"weight {name} of {source} has no counterpart in {type(self).__name__}; the two "
                                f"models do not share that part")
            target = own[name]
            if tensor.shape != target.shape:
                tensor = self.fit_weight(name, tensor, target.shape, source)
            target.copy_(tensor.to(target.device, target.dtype))
            copied += 1
        if not copied:
            raise UserError(f"{source} has no weights under {', '.join(prefixes) or '(no prefixes given)'}; "
                            f"nothing to load")
        return copied

    def fit_weight(self, name: str, tensor: torch.Tensor, shape: torch.Size, source: str) -> torch.Tensor:
        """`tensor` reshaped to this model's `shape` (e.g. position embeddings of another image size)."""
        raise UserError(f"weight {name} of {source} has shape {tuple(tensor.shape)} but {tuple(shape)} in "
                        f"{type(self).__name__}; the architectures differ")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ModelAdapter:
        self.model.to(device)
        return self

    def blocks(self) -> Iterator[Block]:
        for tower in self.towers():
            yield from tower.blocks

    def matrices(self) -> Iterator[PrunableMatrix]:
        for block in self.blocks():
            yield from block.matrices


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"model.dtype={name!r} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_arch_config(arch: str) -> dict:
    """A model architecture shipped in the package (ecoflap_exp/models/arch/<arch>.json)."""
    folder = resources.files("ecoflap_exp.models") / "arch"
    path = folder / f"{arch}.json"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))
        raise UserError(f"model.arch={arch!r} is not a shipped architecture; known: {', '.join(known)}")
    return json.loads(path.read_text())


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied, nested dicts merged key by key (a sub-config's fields)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_transformers_model(auto_class: Any, arch: str | None, checkpoint: str | None, init: str, dtype: str,
                            seed: int, arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    """A transformers model through an Auto class: `init=random` builds a shipped architecture
    (with `arch_overrides` applied) from a seed, `init=pretrained` loads a hub name or local path."""
    dt = torch_dtype(dtype)
    if init == "random":
        if arch is None:
            raise UserError("model.init=random needs model.arch (a shipped architecture name)")
        import transformers

        cfg = merged(load_arch_config(arch), arch_overrides or {})
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        torch.manual_seed(seed)
        # Auto classes build with from_config, concrete model classes with _from_config
        build = getattr(auto_class, "from_config", None) or auto_class._from_config
        model = build(config, dtype=dt)
    elif init == "pretrained":
        if checkpoint is None:
            raise UserError("model.init=pretrained needs model.checkpoint (hub name or local path)")
        source = resolve_checkpoint(checkpoint)
        try:
            model = auto_class.from_pretrained(source, dtype=dt)
        except OSError as err:
            raise hub_load_error(checkpoint, err) from err
    else:
        raise UserError(f"model.init={init!r} is unknown; use 'pretrained' or 'random'")
    return model.eval()


def load_tokenizer(name: str | None) -> Any:
    """`bytes` (ByT5's byte tokenizer: needs no files, for the shipped tiny architectures), or the
    tokenizer of a checkpoint (hub name or local folder)."""
    import transformers

    if name == "bytes":
        return transformers.ByT5Tokenizer()
    if name is None:
        raise UserError("model.tokenizer is unset and there is no checkpoint to take it from")
    try:
        return transformers.AutoTokenizer.from_pretrained(resolve_checkpoint(name))
    except OSError as err:
        raise hub_load_error(name, err) from err


def resolve_checkpoint(checkpoint: str) -> str:
    """A checkpoint is a local directory or a hub name; say clearly when neither can be had."""
    if Path(checkpoint).expanduser().exists():
        return str(Path(checkpoint).expanduser())
    looks_like_path = checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1
    if looks_like_path:
        raise UserError(
            f"model checkpoint path {checkpoint!r} does not exist; pass an existing local folder "
            f"(model.checkpoint=/path/to/model) or a hub name, or build the architecture with "
            f"model.init=random"
        )
    return checkpoint


def hub_load_error(checkpoint: str, err: Exception) -> UserError:
    return UserError(
        f"could not load {checkpoint!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
        f"If it is a hub name, download it first on a machine with network "
        f"(`hf download {checkpoint}`) or unset HF_HUB_OFFLINE; or point model.checkpoint at a "
        f"local copy; or use model.init=random to time the architecture without weights"
    )
