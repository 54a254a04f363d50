"""Typed options: what a constructor's signature says of each parameter beyond its Python type (a
count is at least 1, a fraction lies in [0, 1], names are unique), and the one check of a value
against its parameter's type hint (pydantic, strict: no string read as a number, no 1 read as
true, no NaN or infinity).

The config is checked against the signatures before anything is built (config_schema, naming
each option by its full key); a plugin built in Python (a `Typed` subclass: scorers, pruners,
allocations, calibration sources, evaluations, adapters, fine-tuning) has the arguments it is given
checked by the same code, named by its config group (`pruner.group`)."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError

from ecoflap_exp.errors import UserError


def unique(names: Sequence[str]) -> Sequence[str]:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named more than once")
    return names


#: samples, batch sizes, steps, sequence lengths: at least one
Count = Annotated[int, Field(ge=1)]
#: seeds, workers, retries: zero or more
NonNegativeInt = Annotated[int, Field(ge=0)]
#: shares and sparsities
Fraction = Annotated[float, Field(ge=0, le=1)]
#: step sizes, learning rates, thresholds
PositiveFloat = Annotated[float, Field(gt=0)]
#: budgets, decays, warm-ups
NonNegativeFloat = Annotated[float, Field(ge=0)]
#: tower names, task names, tags: a list (or a tuple, from Python), each once
Names = Annotated[Sequence[str], AfterValidator(unique)]

STRICT = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


@cache
def adapter_for(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation, config=STRICT)


def shown(value: Any) -> str:
    """A value as the command line writes it (strings quoted, so that '0.5' shows it is one)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(plain(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def plain(value: Any) -> str:
    """A value as typed on the command line (strings unquoted)."""
    return value if isinstance(value, str) else shown(value)


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values a Literal allows (also as an optional one); () for any other type."""
    if typing.get_origin(annotation) is Annotated:
        return choices(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return choices(args[0])
    return ()


def example(annotation: Any, default: Any) -> str:
    """A valid value: the parameter's default, else one of its type."""
    if default is not inspect.Parameter.empty and default is not None:
        return plain(list(default) if isinstance(default, tuple) else default)
    allowed = choices(annotation)
    if allowed:
        return plain(allowed[0])
    text = str(annotation)
    for names, value in ((("list", "Sequence", "tuple"), "[a,b]"), (("bool",), "true"), (("float",), "0.5"),
                         (("int",), "1"), (("dict", "Mapping"), "{a: 1}")):
        if any(name in text for name in names):
            return value
    return "<text>"


def accepts_none(annotation: Any) -> bool:
    try:
        adapter_for(annotation).validate_python(None)
    except ValidationError:
        return False
    return True


def check_value(key: str, value: Any, annotation: Any, default: Any) -> None:
    try:
        adapter_for(annotation).validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        if choices(annotation) and first["type"] == "literal_error":
            raise UserError(f"{key}={shown(value)} is unknown; use one of "
                            f"{', '.join(plain(c) for c in choices(annotation))}") from None
        item = next((f" (item {part})" for part in first["loc"] if isinstance(part, int)), "")
        messages = dict.fromkeys("input should be a list, not a string" if e["type"] == "sequence_str" else
                                 f"{e['msg'][0].lower()}{e['msg'][1:]}".removeprefix("value error, ")
                                 for e in err.errors())
        what = " or ".join(messages)
        optional = " or null" if accepts_none(annotation) else ""
        raise UserError(f"{key}={shown(value)} is not valid{item}: {what}; e.g. {key}={example(annotation, default)}"
                        f"{optional}") from None


def parameter_hints(built: Any) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """The keyword parameters of a class (or function), each with its type hint and default, and
    whether it takes **kwargs it does not name (a class whose __init__ passes **kwargs on takes its
    base classes' parameters too)."""
    initialisers = [unwrapped(c.__init__) for c in built.__mro__ if "__init__" in vars(c) and c is not object] \
        if isinstance(built, type) else [built]
    found: dict[str, tuple[Any, Any]] = {}
    for initialiser in initialisers or [built]:
        hints = typing.get_type_hints(initialiser, include_extras=True)
        parameters_of = inspect.signature(initialiser).parameters.values()
        for p in parameters_of:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in found:
                found[p.name] = (hints.get(p.name, Any), p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters_of):
            return found, False
    return found, True


def unwrapped(init: Callable) -> Callable:
    return getattr(init, "__wrapped__", init)


def checked(init: Callable, group: str) -> Callable:
    """`init` with its given arguments checked against its own type hints first."""
    signature = inspect.signature(init)
    hints = functools.cache(lambda: typing.get_type_hints(init, include_extras=True))  # once the module is whole

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        for name, value in signature.bind(self, *args, **kwargs).arguments.items():
            parameter = signature.parameters[name]
            if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                plain_value = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
                check_value(f"{group}.{name}", plain_value, hints().get(name, Any), parameter.default)
        init(self, *args, **kwargs)

    return checked_init


class Typed:
    """A plugin whose constructor checks the arguments it is given against its type hints, as the
    config check does, however it is built. `option_group` names its options in messages."""

    option_group: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = checked(cls.__init__, cls.option_group or cls.__name__)
