"""Loading models: dtypes, the architectures shipped in the package, transformers models and
tokenizers from a hub name or a local folder, and one clear message when a checkpoint cannot be
had."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ecoflap_exp.errors import UserError

#: names a file shipped in the package instead of a path (`shipped:digits_clip` weights,
#: `shipped:calibration` text)
SHIPPED_PREFIX = "shipped:"
#: the image normalisation of OpenAI's CLIP, which BLIP-2's vision encoder shares
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DType = Literal["float32", "float16", "bfloat16"]
#: weights from the checkpoint, or a random initialisation of the architecture (timing runs, tests)
Init = Literal["pretrained", "random"]


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
        untied = False in (cfg.get("tie_word_embeddings"), (cfg.get("text_config") or {}).get("tie_word_embeddings"))
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        torch.manual_seed(seed)
        # Auto classes build with from_config, concrete model classes with _from_config
        build = getattr(auto_class, "from_config", None) or auto_class._from_config
        model = build(config, dtype=dt)
        if untied:
            untie_output_embeddings(model)
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


def wrapped_state(path: str, what: str, otherwise: str) -> dict[str, torch.Tensor]:
    """The state dict a salesforce/BLIP-style checkpoint file holds under "model" (BLIP, UPop and
    their descendants save {"model": state_dict, ...}); `otherwise`: where another layout goes."""
    try:
        checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated or foreign: torch raises several kinds
        detail = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"could not read the {what} checkpoint {path} ({type(err).__name__}: {detail}); download it "
                        f"again") from None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a {what} checkpoint: it has no 'model' state dict ({what} saves "
                        f"{{'model': ...}}); {otherwise}")
    return state


def untie_output_embeddings(model: nn.Module) -> None:
    """The output embedding its own copy of the input's. transformers 5 ties a T5's at construction
    whatever the config says (T5Config sets tie_word_embeddings), and from_pretrained unties them
    when the checkpoint holds two (FlanT5's do); a shipped architecture that says untied is built so."""
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is inputs.weight:
        output.weight = nn.Parameter(inputs.weight.detach().clone())


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


def check_checkpoint(name: str) -> None:
    """UserError now, before anything loads, when `name` cannot be had: a local path that does not
    exist, or a hub name missing from the local cache while the hub is offline (HF_HUB_OFFLINE=1)."""
    if name.startswith(SHIPPED_PREFIX):
        return
    source = resolve_checkpoint(name)
    if Path(source).exists():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(source, "config.json"), str):
        raise UserError(f"checkpoint {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download "
                        f"it first (`hf download {name}`), unset HF_HUB_OFFLINE, or point the config at a local copy")


def hub_load_error(checkpoint: str, err: Exception) -> UserError:
    return UserError(
        f"could not load {checkpoint!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
        f"If it is a hub name, download it first on a machine with network "
        f"(`hf download {checkpoint}`) or unset HF_HUB_OFFLINE; or point model.checkpoint at a "
        f"local copy; or use model.init=random to time the architecture without weights"
    )
