"""Optional adapters: ``model.name: timm/<name>`` and ``tv/<name>`` build timm / torchvision
architectures (random init; pretrained weights come in through ``model.init_from``) when those
packages are importable, so a user's ImageNet-style network can be pruned without being
re-registered. Without the package the name is a one-line error saying what to install.

Inputs are ImageNet-shaped (3x224x224) and the default class count is 1000, as both libraries'.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from sparsetrain.errors import UserError

__all__ = ["EXTERNAL_PREFIXES", "create_external"]

EXTERNAL_PREFIXES = {"timm/": "timm", "tv/": "torchvision"}
INPUT_SIZE = (3, 224, 224)
DEFAULT_CLASSES = 1000


def _import(package: str, name: str) -> Any:
    try:
        return importlib.import_module(package)
    except Exception as e:  # torchvision's compiled ops can fail to load (RuntimeError)
        raise UserError(f"model {name!r} needs {package}, which cannot be imported here "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
                        f"pip install {package}") from None


def create_external(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """The timm / torchvision model ``name`` (``timm/resnet50``, ``tv/resnet18``)."""
    prefix = next(p for p in EXTERNAL_PREFIXES if name.startswith(p))
    package, arch = EXTERNAL_PREFIXES[prefix], name[len(prefix):]
    lib = _import(package, name)
    try:
        if package == "timm":
            if arch not in lib.list_models():
                raise UserError(f"timm has no model {arch!r}")
            return lib.create_model(arch, pretrained=False, num_classes=num_classes, **kw)
        models = importlib.import_module("torchvision.models")
        if arch not in models.list_models():
            raise UserError(f"torchvision has no model {arch!r}")
        return models.get_model(arch, weights=None, num_classes=num_classes, **kw)
    except TypeError as e:  # an unknown keyword of the library's factory
        raise UserError(f"model {name!r}: {e}") from None
