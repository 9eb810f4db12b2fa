"""sparsetrain: sparse and pruned CNN training on one fast engine.

The public API::

    import sparsetrain as st
    cfg = st.load_config("configs/cpu/dense_resnet20_cifar10.yaml", ["train.epochs=1"])
    summary = st.train(cfg)                 # writes runs/<name>/
    model = st.create_model("resnet20", num_classes=10)
"""

from __future__ import annotations

__version__ = "0.1.0"

from sparsetrain.callbacks import Callback
from sparsetrain.config import RunConfig, load_config
from sparsetrain.errors import UserError
from sparsetrain.models import create_model, list_models
from sparsetrain.train.run import train

__all__ = [
    "Callback",
    "RunConfig",
    "UserError",
    "__version__",
    "create_model",
    "list_models",
    "load_config",
    "train",
]
