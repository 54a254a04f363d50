"""The model adapter: how a model family is loaded, walked, calibrated and saved.

An adapter lists its towers (models.seam) in pruning order, turns raw calibration samples into
batches, computes the calibration loss and saves the pruned model. What evaluations ask of a
model beyond that is a capability (models.capabilities), a Protocol an adapter satisfies by
having its methods, never a base-class method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.loading import Init, check_checkpoint, load_transformers_model
from ecoflap_exp.models.seam import Batch, Block, PrunableMatrix, Tower
from ecoflap_exp.options import Names, NonNegativeInt, Typed

#: the target value a cross-entropy skips (padding, prompt tokens)
IGNORE = -100


@dataclass
class LossTerm:
    """One cross-entropy of a calibration loss: logits (..., classes) against integer targets
    (...); targets equal to IGNORE are skipped; `label_smoothing` as the model's own training loss
    has it (BLIP's captioner: 0.1)."""

    logits: torch.Tensor
    targets: torch.Tensor
    label_smoothing: float = 0.0


def contrastive_terms(logits_per_image: torch.Tensor) -> list[LossTerm]:
    """CLIP's symmetric loss with in-batch negatives: image->text and text->image cross-entropies."""
    targets = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return [LossTerm(logits_per_image, targets), LossTerm(logits_per_image.t(), targets)]


class ModelAdapter(Typed, ABC):
    """One model family. Subclasses set `self.model` in __init__ and implement the abstract
    methods; the capabilities evals need (models.capabilities) are further methods of theirs. A
    family's constructor declares only its own options and passes the others (`**common`) on to
    this one's; its module in ecoflap_exp.models is found by models.registry, nothing lists it."""

    option_group = "model"

    model: nn.Module
    #: the short name runs and tables know the model by: its config's (blip2_t5, llama_tiny, ...)
    name: str = ""
    #: the kinds of raw calibration samples `collate` accepts (see CalibrationSource.kind)
    sample_kinds: tuple[str, ...] = ()
    #: names of the towers this run prunes (None: all but `optional_towers`); the model config's `prune_towers`
    prune_towers: list[str] | None = None
    #: towers pruned only when `prune_towers` names them (the papers leave them dense)
    optional_towers: tuple[str, ...] = ()
    #: the view of calibration images the official code uses with this model, which an image
    #: calibration's `augment` defaults to: "eval" (the eval transform) or "train" (the model's
    #: training augmentation)
    calibration_augment: str = "eval"
    #: whether `collate(samples, augment=True)` applies a training augmentation to the images
    has_train_augmentation: bool = False
    #: whether `collate` draws something of its own besides the images' augmentation (BLIP-2's
    #: prefix splits), from a generator `seed_collate` seeds
    collate_draws: bool = False
    #: the weights (name prefixes) this model receives from a pruned model when it serves as a
    #: companion of an evaluation (evals.base.OnCompanion), as the official evaluation copies them
    transfer_prefixes: tuple[str, ...] = ()
    #: how the saved folder loads back with the model's own library (for the model card), with
    #: {path} and {model_class} filled in
    load_hint: str = "transformers.{model_class}.from_pretrained({path!r})"
    #: tokenizer names that need no files (model.tokenizer=bytes: ByT5's byte tokenizer)
    builtin_tokenizers: tuple[str, ...] = ("bytes",)
    #: how each part of the model is held and run (the record's `precision`), for a model whose parts
    #: differ (models/precision.py)
    precision: Mapping[str, str] = MappingProxyType({})
    #: released checkpoint files that no hub holds, by file name -> where to download them (a missing
    #: one is named with its source)
    released_files: Mapping[str, str] = MappingProxyType({})

    def __init__(self, checkpoint: str | None = None, init: Init = "pretrained", seed: NonNegativeInt = 0,
                 prune_towers: Names | None = None, name: str = ""):
        """The options every family takes: `checkpoint` (what it names is the family's: a hub name,
        a folder, a file), `init` (the checkpoint's weights, or `random` from `seed`), `prune_towers`
        and `name`."""
        self.checkpoint, self.init, self.seed, self.name = checkpoint, init, seed, name
        self.prune_towers = list(prune_towers) if prune_towers is not None else None

    @classmethod
    def wraps(cls, model: nn.Module) -> bool:
        """Whether `wrapping` takes this already-loaded model (the Python API finds the adapter so:
        a family that overrides this claims models no other family claims, models.registry)."""
        return False

    @classmethod
    def wrapping(cls, model: nn.Module, **settings: Any) -> ModelAdapter:
        """An adapter around an already-loaded model, loading nothing (the Python API's path)."""
        raise UserError(f"{cls.__name__} cannot wrap an already-loaded model; build it from its config instead")

    @classmethod
    def checkpoints(cls, config: Mapping[str, Any]) -> list[str]:
        """The checkpoints and tokenizers (hub names, local folders) a model built from `config`
        loads; the run resolves each before any model loads. By default `checkpoint` (when
        pretrained) and `tokenizer`."""
        names = [config.get("checkpoint")] if config.get("init", "pretrained") == "pretrained" else []
        names.append(config.get("tokenizer"))
        return [n for n in names if isinstance(n, str) and n not in cls.builtin_tokenizers]

    @classmethod
    def check_checkpoints(cls, config: Mapping[str, Any]) -> None:
        """UserError now when one of `checkpoints(config)` cannot be had (loading.check_checkpoint)."""
        for name in cls.checkpoints(config):
            source = cls.released_files.get(Path(name).name)
            if source and not Path(name).expanduser().is_file():
                raise UserError(f"checkpoint {name} does not exist; download {Path(name).name} ({source}) to that "
                                f"path, or point the model config's checkpoint elsewhere")
            check_checkpoint(name)

    @abstractmethod
    def all_towers(self) -> list[Tower]:
        """Every tower of the model, in pruning order."""

    def towers(self) -> list[Tower]:
        """The towers to prune (those named in `prune_towers`), in pruning order."""
        towers = self.all_towers()
        if self.prune_towers is None:
            return [t for t in towers if t.name not in self.optional_towers]
        names = [t.name for t in towers]
        unknown = [name for name in self.prune_towers if name not in names]
        if unknown or not self.prune_towers:
            raise UserError(f"model.prune_towers={list(self.prune_towers)} must name some of {type(self).__name__}'s "
                            f"towers: {', '.join(names)}")
        return [t for t in towers if t.name in self.prune_towers]

    @abstractmethod
    def collate(self, samples: list[Any]) -> Batch:
        """Raw calibration samples (strings, (image, label) pairs, ...) -> one model batch."""

    def seed_collate(self, seed: int) -> None:
        """Seed what `collate` draws of its own (see collate_draws); most adapters draw nothing."""
        return None

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
                                  ignore_index=IGNORE, label_smoothing=t.label_smoothing)
                  for t in self.loss_terms(batch)]
        return torch.stack(losses).mean()

    @abstractmethod
    def save(self, path: Path) -> None:
        """Save the (pruned) weights in the library's own format."""

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

    @torch.no_grad()
    def zero_share(self) -> float:
        """The share of zeros among the weights of the prunable matrices of the towers to prune (the
        set a run's achieved sparsity is measured over)."""
        matrices = list(self.matrices())
        zeros = sum(m.zeros() for m in matrices)
        return zeros / max(1, sum(m.weight.numel() for m in matrices))




class TransformersAdapter(ModelAdapter):
    """A family whose model transformers builds: from `checkpoint`, or at `init=random` from the
    shipped architecture `arch` with `arch_overrides` (fields of it to change) applied."""

    def __init__(self, arch: str | None = None, arch_overrides: dict[str, Any] | None = None, **common: Any):
        super().__init__(**common)
        self.arch, self.arch_overrides = arch, arch_overrides

    def load_model(self, auto_class: Any, dtype: str) -> nn.Module:
        """The model through `auto_class` (loading.load_transformers_model) in `dtype`."""
        return load_transformers_model(auto_class, self.arch, self.checkpoint, self.init, dtype, self.seed,
                                       self.arch_overrides)
