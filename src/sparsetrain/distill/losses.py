"""Distillation losses of MEAL V2 (Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to
80%+ Top-1 Accuracy on ImageNet without Tricks", 2020).

The student learns from the mean of the teachers' softmax outputs (the ensemble's soft target)
with a soft cross-entropy, optionally mixed with the label loss, plus (optionally) the official
discriminator's loss on student vs teacher logits, added to the student's loss. MEAL V2 itself
uses T = 1, no hard labels (alpha = 0) and no weight decay.

Every loss is computed in fp32, also under bf16 autocast: logits are cast to float and the
discriminator runs with autocast disabled, so a softmax over 1000 classes never rounds to bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.errors import UserError


def _fp32(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast for ``t``'s device type (a no-op where autocast is off)."""
    return torch.autocast(t.device.type, enabled=False)


def soft_target(teacher_logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """MEAL V2 Eq. 1: ``p = mean_t softmax(z_t / T)`` over teachers; fp32 ``[B, C]``."""
    if len(teacher_logits) == 0:
        raise UserError("soft_target needs at least one teacher's logits")
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    with _fp32(teacher_logits[0]):
        probs = [F.softmax(z.float() / temperature, dim=-1) for z in teacher_logits]
        return torch.stack(probs).mean(0)


def distill_loss(
    student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """MEAL V2 Eq. 2 (Hinton et al. scaling): ``T² · mean_b(-Σ_c p_bc log softmax(s_b/T)_c)``.

    This is the soft **cross-entropy**, not the KL divergence: it equals
    ``KL(p || q) + H(p)``, so its gradient is the KL's but its value is offset by the target's
    entropy (it is not zero when the student matches the teachers).
    """
    if student_logits.shape != target_probs.shape:
        raise UserError(
            f"student logits {tuple(student_logits.shape)} and teacher targets "
            f"{tuple(target_probs.shape)} differ in shape (number of classes?)"
        )
    with _fp32(student_logits):
        log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
        ce = -(target_probs.float() * log_q).sum(-1).mean()
    return ce * (temperature * temperature)


def combined_loss(label_loss: torch.Tensor, kd_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha · label_loss + (1 − alpha) · kd_loss``; alpha = 0 (MEAL V2's choice: no hard
    labels) returns ``kd_loss`` itself and alpha = 1 returns ``label_loss`` itself."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return kd_loss
    if alpha == 1.0:
        return label_loss
    return alpha * label_loss.float() + (1.0 - alpha) * kd_loss.float()


class Discriminator(nn.Module):
    """MEAL V2's discriminator as the official code builds it (``models/discriminator.py``):
    on logits ``[B, C]``, ``C → C/K → C/K² → 2`` with a ReLU after every layer, the last one
    included (its two outputs are non-negative logits, scored by BCE-with-logits). The official
    layers are 1×1 convolutions on a ``[B, C, 1, 1]`` map, which is exactly a linear layer;
    K = 8 as the official ImageNet setting (1000 → 125 → 15 → 2). Hidden widths are floored at
    8 so that few classes still give a usable network (10 classes: 10 → 8 → 8 → 2, where the
    official formula gives 10 → 1 → 0); with the final ReLU, a 2-unit layer is often dead for
    every input and then no gradient ever reaches the discriminator."""

    def __init__(self, num_classes: int, k: int = 8) -> None:
        super().__init__()
        if num_classes < 2 or k < 1:
            raise UserError(f"bad discriminator size: {num_classes} classes, K = {k}")
        h1 = max(8, num_classes // k)
        h2 = max(8, h1 // k)
        self.net = nn.Sequential(
            nn.Linear(num_classes, h1), nn.ReLU(),
            nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, 2), nn.ReLU(),
        )

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits)  # [B, 2]


def discriminator_loss(
    disc: nn.Module, student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """MEAL V2's discriminator loss (official ``discriminatorLoss``): BCE-with-logits of
    ``disc([student; teacher])`` against ``[1, 0]`` for the student's rows and ``[0, 1]`` for the
    teachers' (mean of the teachers' logits), averaged over all ``2B × 2`` entries.

    The student's logits keep their graph: the official code *adds* this loss to the student's
    (one backward, one optimizer), so it acts as a regularizer with which the student helps the
    discriminator tell it from the teachers; it is not a GAN's fooling term. The teachers'
    logits are constants."""
    if student_logits.shape != teacher_logits.shape:
        raise UserError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                        f"{tuple(teacher_logits.shape)} differ in shape")
    with _fp32(student_logits):
        both = torch.cat([student_logits.float(), teacher_logits.detach().float()])
        b = student_logits.shape[0]
        target = torch.zeros(2 * b, 2, device=both.device)
        target[:b, 0] = 1.0
        target[b:, 1] = 1.0
        return F.binary_cross_entropy_with_logits(disc(both), target)
