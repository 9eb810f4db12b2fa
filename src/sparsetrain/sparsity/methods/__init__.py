"""Sparsity methods: one small class each on :class:`SparsityMethod`, found by name."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.sparsity.methods import dynamic as _dynamic  # noqa: F401  (registers)
from sparsetrain.sparsity.methods import static as _static  # noqa: F401
from sparsetrain.sparsity.methods.base import (
    METHODS,
    SparsityMethod,
    create_method,
    list_methods,
    register_method,
)

__all__ = ["SparsityMethod", "create_method", "list_methods", "method_from_config",
           "register_method"]

RUN_KEYS = ("method", "score_batches")  # used by the run, not passed to the method


def accepted_options(cls: type[SparsityMethod]) -> set[str]:
    """Keyword options the method's constructors (own and inherited) accept."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
    return names


def method_from_config(
    options: dict[str, Any], defaults: dict[str, Any], model: nn.Module,
    optimizer: torch.optim.Optimizer | None, *, seed: int, **run: Any,
) -> SparsityMethod:
    """Build the method named by ``options["method"]`` from a config section; a key the method
    does not use but that differs from its default is an error, never silently ignored.
    ``run`` passes what the run knows (``total_steps``, ``steps_per_epoch``)."""
    name = options["method"]
    if name not in METHODS:
        raise UserError(f"unknown sparsity method {name!r}; choose from {list_methods()}")
    accepted = accepted_options(METHODS[name])
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in RUN_KEYS:
            continue
        if key in accepted:
            kwargs[key] = value
        elif value != defaults.get(key):
            raise UserError(f"sparsity.{key} is not used by method {name!r}")
    kwargs["seed"] = seed if kwargs.get("seed") is None else kwargs["seed"]
    return create_method(name, model, optimizer, **kwargs, **run)
