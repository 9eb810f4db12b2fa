"""Model zoo: CIFAR ResNets, WideResNets, VGG-BN, ImageNet/CIFAR ResNet-18/34/50, MobileNets.

Build models by name only::

    from sparsetrain.models import create_model, list_models
    model = create_model("resnet20", num_classes=10)   # model.input_size == (3, 32, 32)
"""

from __future__ import annotations

# Importing the architecture modules registers their factories.
from sparsetrain.models import mobilenet, resnet, resnet_cifar, vgg, wrn  # noqa: F401
from sparsetrain.models._registry import (
    ModelInfo,
    create_model,
    init_weights,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "ModelInfo", "create_model", "init_weights", "list_models", "model_info", "register_model",
]
