"""Engine callbacks: the extension points sparsity methods, distillation and loggers use.

Hooks are called in list order. A callback with state (a sparsity method's masks generator,
a teacher cache) returns it from ``state_dict`` and it is saved in every checkpoint under the
callback's ``name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sparsetrain.train.engine import Trainer


class Callback:
    """Base class; override only the hooks you need."""

    name: str = "callback"

    def on_train_start(self, trainer: Trainer) -> None:
        """After model, optimizer and (on resume) states are ready, before the first step."""

    def loss(
        self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor,
        outputs: torch.Tensor, loss: torch.Tensor,
    ) -> torch.Tensor:
        """Return the loss to backpropagate (e.g. add a distillation term). Runs under autocast."""
        return loss

    def before_optimizer_step(self, trainer: Trainer) -> None:
        """Gradients are computed and unmodified (dense); the optimizer has not stepped."""

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """The optimizer has stepped; ``trainer.step`` is already incremented."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Add entries to ``metrics`` (written to metrics.jsonl) or act on them."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Add entries to the run summary."""

    def progress(self) -> dict[str, str]:
        """Short fields for the progress bar (e.g. density)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
