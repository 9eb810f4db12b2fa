"""Distillation losses of MEAL V2 (Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to
80%+ Top-1 Accuracy on ImageNet without Tricks", 2020).

The student learns from the mean of the teachers' softmax outputs (the ensemble's soft target)
with a soft cross-entropy, optionally mixed with the label loss and helped by a discriminator
that tells teacher from student output distributions (real = teacher, fake = student).

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
    """MEAL V2 §3.3: a small MLP ``C → hidden → hidden → 1`` (ReLU) on a class distribution;
    outputs one real/fake logit per sample."""

    def __init__(self, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        if num_classes < 2 or hidden < 1:
            raise UserError(f"bad discriminator size: {num_classes} classes, hidden {hidden}")
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs).squeeze(-1)  # [B]


def discriminator_loss(
    disc: nn.Module, student_logits: torch.Tensor, target_probs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Discriminator's BCE, mean of real (teacher target → 1) and fake (student → 0) terms.
    The student's logits are detached: this loss never reaches the student."""
    with _fp32(student_logits):
        fake = F.softmax(student_logits.detach().float() / temperature, dim=-1)
        d_real, d_fake = disc(target_probs.detach().float()), disc(fake)
        real_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        fake_loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        return 0.5 * (real_loss + fake_loss)


def generator_loss(
    disc: nn.Module, student_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The student's adversarial term: ``BCE(disc(softmax(s / T)), 1)`` (fool the critic)."""
    with _fp32(student_logits):
        d_fake = disc(F.softmax(student_logits.float() / temperature, dim=-1))
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


def discriminator_losses(
    disc: nn.Module, student_logits: torch.Tensor, target_probs: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d_loss, g_loss)`` with the same discriminator.

    The discriminator sees class distributions at temperature ``T``, not raw logits: the
    teacher side is the ensemble's soft target (an ensemble has no single logit vector, and on
    a soft-label cache hit no teacher logits exist), and logits are defined only up to an
    additive constant, which a critic could exploit without learning anything useful.
    """
    return (discriminator_loss(disc, student_logits, target_probs, temperature),
            generator_loss(disc, student_logits, temperature))
