"""Knowledge distillation in the style of MEAL V2 (Shen & Savvides, 2020).

    from sparsetrain.distill import build_distillation
    cb = build_distillation(["runs/teacher/best.pt"], temperature=1.0, alpha=0.0)
    sparsetrain.train(cfg, callbacks=[cb])
"""

from __future__ import annotations

from sparsetrain.distill.callback import Distillation, build_distillation
from sparsetrain.distill.losses import (
    Discriminator,
    combined_loss,
    discriminator_loss,
    distill_loss,
    soft_target,
)
from sparsetrain.distill.teachers import (
    EpochKey,
    SoftLabelCache,
    TeacherEnsemble,
    files_fingerprint,
)

__all__ = [
    "Discriminator",
    "Distillation",
    "EpochKey",
    "SoftLabelCache",
    "TeacherEnsemble",
    "build_distillation",
    "combined_loss",
    "discriminator_loss",
    "distill_loss",
    "files_fingerprint",
    "soft_target",
]
