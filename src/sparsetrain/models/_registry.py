"""Name -> factory registry for the model zoo (timm style), plus the shared weight init.

Every architecture module decorates its factories with :func:`register_model`; callers only ever
use :func:`create_model`, :func:`list_models` and :func:`model_info`, so adding a model never
touches an if/elif chain.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from sparsetrain.errors import UserError

__all__ = [
    "ModelInfo",
    "check_positive",
    "create_model",
    "init_weights",
    "list_models",
    "model_info",
    "register_model",
]

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model (no model is built to get them)."""

    name: str
    family: str
    input_size: tuple[int, int, int]
    default_num_classes: int


_REGISTRY: dict[str, tuple[Factory, ModelInfo]] = {}


def _default_num_classes(fn: Factory) -> int:
    param = inspect.signature(fn).parameters.get("num_classes")
    if param is None or not isinstance(param.default, int):
        raise TypeError(f"model factory {fn.__name__!r} needs a `num_classes: int = N` argument")
    return param.default


def register_model(
    name: str,
    input_size: tuple[int, int, int] = (3, 32, 32),
    family: str = "resnet_cifar",
) -> Callable[[F], F]:
    """Decorator registering ``fn(num_classes: int = N, **kw) -> nn.Module`` under ``name``.

    The default class count ``N`` is read from the factory's signature. Registering a name twice
    raises :class:`UserError`.
    """
    if name in _REGISTRY:
        raise UserError(f"model name {name!r} is already registered")
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size!r}")

    def decorator(fn: F) -> F:
        if name in _REGISTRY:
            raise UserError(f"model name {name!r} is already registered")
        info = ModelInfo(
            name=name,
            family=family,
            input_size=tuple(int(v) for v in input_size),  # type: ignore[arg-type]
            default_num_classes=_default_num_classes(fn),
        )
        _REGISTRY[name] = (fn, info)
        return fn

    return decorator


def _closest(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.0)
    return ", ".join(close) if close else "(none)"


def _lookup(name: str) -> tuple[Factory, ModelInfo]:
    from sparsetrain.models.external import (
        DEFAULT_CLASSES,
        EXTERNAL_PREFIXES,
        INPUT_SIZE,
        create_external,
    )

    entry = _REGISTRY.get(name)
    if entry is None and isinstance(name, str) and name.startswith(tuple(EXTERNAL_PREFIXES)):
        def factory(num_classes: int = DEFAULT_CLASSES, **kw: Any) -> nn.Module:
            return create_external(name, num_classes, **kw)

        return factory, ModelInfo(name, name.split("/")[0], INPUT_SIZE, DEFAULT_CLASSES)
    if entry is None:
        raise UserError(
            f"unknown model {name!r}; closest valid names: {_closest(str(name), list_models())}"
        )
    return entry


def _check_kwargs(name: str, fn: Factory, kw: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the factory validates its own extras
    allowed = sorted(k for k in params if k != "num_classes")
    for key in kw:
        if key not in params:
            valid = ", ".join(allowed) if allowed else "none"
            raise UserError(f"unknown option {key!r} for model {name!r} (valid options: {valid})")


def create_model(name: str, num_classes: int | None = None, **kw: Any) -> nn.Module:
    """Build the registered model ``name``.

    ``num_classes=None`` means the model's registered default (10 for CIFAR models, 1000 for
    ImageNet ones). The returned module carries ``input_size`` (C, H, W) and ``arch_name``.
    """
    fn, info = _lookup(name)
    _check_kwargs(name, fn, kw)
    n_cls = info.default_num_classes if num_classes is None else num_classes
    if isinstance(n_cls, bool) or not isinstance(n_cls, int) or n_cls < 1:
        raise UserError(f"num_classes must be a positive integer, got {n_cls!r}")
    model = fn(num_classes=n_cls, **kw)
    model.input_size = info.input_size
    model.arch_name = name
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch ``pattern`` (e.g. ``resnet*``)."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def model_info(name: str) -> ModelInfo:
    """Static info for ``name``; raises :class:`UserError` for unknown names."""
    return _lookup(name)[1]


def check_positive(name: str, option: str, value: float) -> None:
    """Raise :class:`UserError` unless ``value`` is a positive number (for width-like options)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{option} must be a positive number for {name!r}, got {value!r}")


def init_weights(model: nn.Module) -> None:
    """Shared init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0, Linear N(0, 0.01).

    The Linear rule (normal std 0.01, zero bias) is the one torchvision uses for VGG/MobileNet.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
