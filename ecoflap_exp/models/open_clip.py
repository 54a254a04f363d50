"""CLIP through open_clip: a vision tower and a text tower, pruned in that order.

open_clip's attention is nn.MultiheadAttention: q, k and v live in one `in_proj_weight` and the
fused kernel reads `out_proj.weight` directly, so hooks on `out_proj` never fire. The prunable
matrices are therefore `in_proj_weight` (input: the attention module's query input) and
`out_proj.weight`, whose input (the per-head attention context) is recomputed from the attention
module's own input; plus the MLP's c_fc and c_proj.

`in_proj_weight` is ONE matrix by default (`split_qkv=false`), as ECoFLaP's CoOp pruner scores and
prunes it: one zeroth-order perturbation over all 3d rows, SparseGPT's mask chosen over all of
them, one group for the allocation. `split_qkv=true` makes its q, k and v row slices three
matrices, as transformers' CLIP has them (per-row Wanda is the same either way).
The ID paper's CLIP (Nofear18/ID_VL_Pruning on sdc17/UPop) starts from UPop's Flickr30k fine-tune
(`checkpoint`: {"model": OpenAI CLIP's state dict, plus momentum encoders and queues}), sees images
resized to a square (`resize=square`: UPop's transform_test, no centre crop) and captions cleaned
by BLIP's pre_caption to 30 words (`caption_words`), in training and evaluation alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision import transforms

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import LossTerm, ModelAdapter, contrastive_terms
from ecoflap_exp.models.blip2 import square_resize
from ecoflap_exp.models.blip_text import blip_caption
from ecoflap_exp.models.loading import (
    CLIP_MEAN,
    CLIP_STD,
    SHIPPED_PREFIX,
    DType,
    hub_load_error,
    torch_dtype,
    wrapped_state,
)
from ecoflap_exp.models.seam import Batch, Block, PrunableMatrix, Tower
from ecoflap_exp.options import Count


def attention_context(mha: nn.MultiheadAttention, args: tuple, kwargs: dict, masked: bool = True) -> torch.Tensor:
    """The input of `mha.out_proj` for a self-attention call mha(x, x, x, attn_mask=...); with
    `masked=False` the context of attention over every position, the call's mask left out."""
    x = args[0] if mha.batch_first else args[0].transpose(0, 1)
    batch, tokens, width = x.shape
    heads = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    mask = kwargs.get("attn_mask", args[4] if len(args) > 4 else None) if masked else None
    if mask is not None and mask.dtype == torch.bool:  # MHA: True = masked out; SDPA: True = attend
        mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill(mask, float("-inf"))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    context = context.transpose(1, 2).reshape(batch, tokens, width)
    return context if mha.batch_first else context.transpose(0, 1)


def resblock_matrices(name: str, block: nn.Module, split_qkv: bool, in_proj: bool = True,
                      masked_context: bool = True) -> list[PrunableMatrix]:
    """A residual block's matrices; without `in_proj` only out_proj, c_fc and c_proj (the ID
    paper's CLIP pruner leaves the packed q, k, v parameter alone); `masked_context`: out_proj's
    input recomputed with the block's attention mask (what its forward computes) or without."""
    attn: nn.MultiheadAttention = block.attn
    width = attn.embed_dim
    if not in_proj:
        matrices = []
    elif split_qkv:
        matrices = [PrunableMatrix(f"{name}.attn.in_proj.{part}", attn.in_proj_weight, attn,
                                   slice(i * width, (i + 1) * width)) for i, part in enumerate("qkv")]
    else:
        matrices = [PrunableMatrix(f"{name}.attn.in_proj", attn.in_proj_weight, attn)]
    matrices.append(PrunableMatrix(f"{name}.attn.out_proj", attn.out_proj.weight, attn,
                                   input_of=lambda args, kwargs: attention_context(attn, args, kwargs, masked_context)))
    for linear in ("c_fc", "c_proj"):
        module = getattr(block.mlp, linear)
        matrices.append(PrunableMatrix(f"{name}.mlp.{linear}", module.weight, module))
    return matrices


def shipped_weights(name: str) -> dict[str, torch.Tensor]:
    """Weights trained by this project's scripts and shipped in models/weights/ (stored in fp16)."""
    path = resources.files("ecoflap_exp.models") / "weights" / f"{name}.safetensors"
    if not path.is_file():
        raise UserError(f"no shipped weights named {name!r} (models/weights/{name}.safetensors); "
                        f"scripts/train_{name}.py trains them")
    return {k: v.float() for k, v in load_file(str(path)).items()}


Resize = Literal["crop", "square"]
AttentionStats = Literal["causal", "unmasked"]


def upop_state(path: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of `model` from a UPop/BLIP-style checkpoint ({"model": state dict named as OpenAI's
    CLIP, which open_clip's CLIP shares}); its momentum encoders (`*_m`) and queues are not the model."""
    state = wrapped_state(path, "UPop", "an open_clip checkpoint goes to model.pretrained")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UserError(f"{path} lacks {len(missing)} weight(s) of {type(model).__name__} (first: {missing[0]}); is it "
                        f"a CLIP of model.model_name's architecture?")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise UserError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model "
                        f"{tuple(own[wrong[0]].shape)}; is it a CLIP of model.model_name's architecture?")
    return {k: state[k] for k in own}


def register_shipped_configs() -> None:
    """Make the open_clip model configs shipped in ecoflap_exp/models/arch/open_clip/ known by name."""
    import open_clip

    folder = resources.files("ecoflap_exp.models") / "arch" / "open_clip"
    open_clip.add_model_config(Path(str(folder)))


def check_activation(model_name: str, pretrained: str | None) -> None:
    """UserError unless the architecture has the activation the tag's weights were trained with.
    open_clip's pretrained config of each tag says `quick_gelu` (OpenAI's CLIP weights: QuickGELU),
    while its plain model configs (ViT-B-16) build nn.GELU and it only warns on the mismatch; the
    `-quickgelu` names build QuickGELU. A tag is looked up under the name given and under the name
    without `-quickgelu`, so a GELU-trained tag asked for with a QuickGELU name is refused too."""
    import open_clip

    if not pretrained or pretrained.startswith(SHIPPED_PREFIX):
        return
    model_cfg = open_clip.get_model_config(model_name)
    base = model_name.removesuffix("-quickgelu")
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or open_clip.get_pretrained_cfg(base, pretrained)
    if model_cfg is None or not tag_cfg:  # a local checkpoint file, or a name open_clip does not know
        return
    trained, built = bool(tag_cfg.get("quick_gelu", False)), bool(model_cfg.get("quick_gelu", False))
    if trained != built:
        fix = f"{base}-quickgelu" if trained else base
        raise UserError(f"model.model_name={model_name!r} builds {'QuickGELU' if built else 'nn.GELU'} but the weights "
                        f"of model.pretrained={pretrained!r} were trained with {'QuickGELU' if trained else 'nn.GELU'} "
                        f"(open_clip's pretrained config: quick_gelu={trained}); use model.model_name={fix}")


class DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def quiet_random_init_notice(shipped: bool) -> Iterator[None]:
    """open_clip warns that a model built without `pretrained` is randomly initialised; shipped
    weights are loaded right after, so the warning would be false there."""
    notice = DropRandomInitNotice()
    if shipped:
        logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


class OpenCLIPAdapter(ModelAdapter):
    """`model_name` is any open_clip model name (ViT-B-16-quickgelu, ...) or a config shipped in
    models/arch/open_clip/, with the activation its tag was trained with (`check_activation`, also
    at `init=random`); `pretrained` an open_clip tag (openai, laion2b_...), a local
    checkpoint file, or `shipped:<name>` for weights in models/weights/; `init=random` builds the
    architecture with no weights. Towers: vision, text (`prune_towers` picks some). `split_qkv`:
    in_proj's q, k, v as three matrices instead of one (the official code's unit); `prune_in_proj`:
    false leaves it out (the ID paper's CLIP). Training images (fine-tuning, `augment`) get UPop's
    retrieval view, which the ID paper's CLIP fine-tuning uses: a bicubic random resized crop
    (scale 0.5-1) and a random flip (its RandAugment is not applied). `checkpoint`: a UPop
    checkpoint loaded over the architecture (the tag in `pretrained` then names the weights it
    descends from, for the activation check, and is not loaded); `resize`: `crop` (open_clip's and
    OpenAI's view: shorter side, centre crop) or `square` (UPop's); `caption_words`: captions
    cleaned by BLIP's pre_caption to that many words (null: as written); `text_attention_stats`:
    the text tower's out_proj statistics from its `causal` attention (what its forward computes) or
    `unmasked` (CoOp's pruner, behind ECoFLaP's CLIP rows, hooks a shadow attention called without
    the causal mask, so every position attends to every other, pads included)."""

    sample_kinds = ("image_captions",)
    has_train_augmentation = True
    prune_in_proj = True
    caption_words: int | None = None
    text_attention_stats = "causal"
    #: UPop's Flickr30k CLIP (sdc17/UPop README, "Uncompressed Model" of CLIP on Flickr30k), the ID paper's start
    released_files = MappingProxyType({
        "clip_large_retrieval_flickr.pth": "https://drive.google.com/uc?id=1-MZP6xQRnmLZr1_pqUK4TvOA8Ic7XCoI"})

    @classmethod
    def checkpoints(cls, config: Mapping[str, Any]) -> list[str]:
        """A local checkpoint file (open_clip tags and hf-hub: names are open_clip's to resolve), or
        the UPop checkpoint that replaces the tag's weights."""
        pretrained = config.get("pretrained")
        if config.get("init", "pretrained") != "pretrained":
            return []
        if isinstance(config.get("checkpoint"), str):
            return [config["checkpoint"]]
        if not isinstance(pretrained, str):
            return []
        local = not pretrained.startswith(("hf-hub:", SHIPPED_PREFIX)) and ("/" in pretrained or "." in pretrained)
        return [pretrained] if local else []

    @classmethod
    def wraps(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("open_clip")

    @classmethod
    def wrapping(cls, model: nn.Module, preprocess: Any = None, tokenizer: Any = None, model_name: str | None = None,
                 split_qkv: bool = False, name: str = "") -> OpenCLIPAdapter:
        """`preprocess` and `tokenizer` (open_clip's, from create_model_and_transforms and
        get_tokenizer) are needed only to collate raw (image, caption) pairs; `model_name` only to save."""
        adapter = cls.__new__(cls)
        adapter.name = name or model_name or type(model).__name__
        adapter.model = model.eval()
        adapter.preprocess, adapter.tokenizer = preprocess, tokenizer
        adapter.construction = {"model_name": model_name}
        adapter.split_qkv = split_qkv
        return adapter

    def __init__(self, model_name: str, pretrained: str | None = None, dtype: DType = "float32",
                 split_qkv: bool = False, prune_in_proj: bool = True, resize: Resize = "crop",
                 caption_words: Count | None = None, text_attention_stats: AttentionStats = "causal", **common: Any):
        import open_clip

        super().__init__(**common)
        init, checkpoint = self.init, self.checkpoint
        register_shipped_configs()
        if init == "pretrained" and not (pretrained or checkpoint):
            raise UserError("model.init=pretrained needs model.pretrained (an open_clip tag or a checkpoint path)")
        check_activation(model_name, pretrained)
        torch.manual_seed(self.seed)
        own = init == "pretrained" and (checkpoint is not None or str(pretrained).startswith(SHIPPED_PREFIX))
        try:
            with quiet_random_init_notice(own):
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained if init == "pretrained" and not own else None)
        except RuntimeError as err:
            raise hub_load_error(f"{model_name}:{pretrained}", err) from err
        if init == "pretrained" and checkpoint is not None:
            self.model.load_state_dict(upop_state(checkpoint, self.model))
        elif own:
            self.model.load_state_dict(shipped_weights(str(pretrained).removeprefix(SHIPPED_PREFIX)))
        self.model.to(torch_dtype(dtype)).eval()
        if resize == "square":  # UPop's transform_test: both sides to the image size, bicubic, no crop
            self.preprocess = square_resize(self.image_size(), *self.normalisation())
        self.caption_words = caption_words
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.construction = {"model_name": model_name}
        self.split_qkv, self.prune_in_proj = split_qkv, prune_in_proj
        self.text_attention_stats = text_attention_stats

    def all_towers(self) -> list[Tower]:
        """Vision, then text, which meet only in the loss; the text's padding to the context length
        enters the statistics, as in ECoFLaP's CoOp pruner, which hooks every position of CLIP's
        77-token sequences."""
        towers = []
        for tower_name, path, root in (("vision", "visual.transformer.resblocks", self.model.visual),
                                       ("text", "transformer.resblocks", self.model.transformer)):
            masked = tower_name == "vision" or self.text_attention_stats == "causal"
            blocks = self.model.get_submodule(path)
            towers.append(Tower(tower_name, [Block(f"{path}.{i}", b, resblock_matrices(
                f"{path}.{i}", b, self.split_qkv, self.prune_in_proj, masked)) for i, b in enumerate(blocks)],
                root=root, reads=()))
        return towers

    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, tuple | list) else size

    def normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        config = getattr(self.model.visual, "preprocess_cfg", None) or {}
        return config.get("mean", CLIP_MEAN), config.get("std", CLIP_STD)

    def train_view(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.RandomResizedCrop(self.image_size(), scale=(0.5, 1.0),
                                         interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(*self.normalisation()),
        ])

    def captions(self, texts: list[str]) -> list[str]:
        return [blip_caption(t, self.caption_words) for t in texts] if self.caption_words else list(texts)

    def collate(self, samples: list[tuple[Image.Image, str]], augment: bool = False) -> Batch:
        if self.preprocess is None or self.tokenizer is None:
            raise UserError("this wrapped open_clip model has no preprocess or tokenizer to collate raw (image, "
                            "caption) pairs; pass preprocess= and tokenizer= (open_clip's), or collated batches")
        dtype = next(self.model.parameters()).dtype
        view = self.train_view() if augment else self.preprocess
        images = torch.stack([view(image.convert("RGB")) for image, _ in samples])
        texts = self.tokenizer(self.captions([c for _, c in samples]))
        return {"image": images.to(self.device, dtype), "text": texts.to(self.device)}

    def forward(self, batch: Batch) -> Any:
        return self.model(batch["image"], batch["text"])

    def loss_terms(self, batch: Batch) -> list[LossTerm]:
        """Symmetric CLIP contrastive loss with in-batch negatives (ECoFLaP's CLIP calibration loss)."""
        image, text, scale = self.forward(batch)[:3]
        return contrastive_terms(scale * image.float() @ text.float().t())

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device, dtype)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(self.captions(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    load_hint = "open_clip.create_model_and_transforms('local-dir:' + {path!r})"

    def save(self, path: Path) -> None:
        """open_clip's own local-dir layout (open_clip_config.json with the model and preprocess
        configs, open_clip_model.safetensors): `create_model_and_transforms("local-dir:<path>")`."""
        import open_clip

        name = self.construction.get("model_name")
        model_cfg = open_clip.get_model_config(name) if name else None
        if model_cfg is None:
            raise UserError("cannot save this open_clip model: its architecture config is unknown; wrap it with "
                            "model_name=<its open_clip name>")
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, path / "open_clip_model.safetensors")
        preprocess = dict(getattr(self.model.visual, "preprocess_cfg", None) or {})
        (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess},
                                                               indent=1))
