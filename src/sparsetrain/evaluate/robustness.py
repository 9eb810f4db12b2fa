"""Adversarial robustness under an L∞ budget: FGSM and PGD accuracy (DESIGN.md §3.8).

Attacks work in pixel space: ``x01`` is a float32 ``[B, C, H, W]`` batch in ``[0, 1]``, the
normalization ``(x - mean) / std`` runs inside the attacked function, and adversarial images
are clamped to ``[0, 1]``, so ``eps = 8/255`` means eight grey levels. Every attack in
:data:`ATTACKS` shares one signature::

    attack(model, x01, y, eps, normalize, *, generator=None) -> x_adv

The model runs in eval mode and fp32 (autocast off); gradients are taken with
``torch.autograd.grad`` with respect to the input only, so no parameter's ``.grad`` is touched,
and the train/eval mode of every submodule is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.errors import UserError

Normalize = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def pixel_normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> Normalize:
    """``x01 -> (x01 - mean) / std`` per channel, for ``[B, C, H, W]`` batches."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean_t) / std_t


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalize):
    """Gradient of the summed cross-entropy with respect to the pixel batch ``x`` only."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        loss = F.cross_entropy(model(normalize(x)).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def fgsm(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    normalize: Normalize | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., ICLR 2015):
    ``clamp(x + eps * sign(grad_x CE), 0, 1)``. ``generator`` is unused (shared signature)."""
    del generator
    with eval_mode(model):
        g = _input_grad(model, x01, y, normalize or _identity)
    return (x01 + eps * g.sign()).clamp_(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    normalize: Normalize | None = None,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the L∞ ball (Madry et al., ICLR 2018): from a uniform
    random start in the ball, ``steps`` signed-gradient steps of ``step_size`` (default
    ``eps / 4``), each projected onto the ball around ``x01`` and onto ``[0, 1]``.
    The random start is drawn from ``generator`` (on its own device) when given."""
    if steps < 0:
        raise UserError(f"PGD steps must be >= 0, got {steps}")
    normalize = normalize or _identity
    alpha = eps / 4 if step_size is None else step_size
    x0 = x01.detach()
    lo, hi = (x0 - eps).clamp_(min=0.0), (x0 + eps).clamp_(max=1.0)
    x = x0.clone()
    if random_start and eps > 0:
        dev = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        x = torch.minimum(torch.maximum(x0 + (2 * u - 1) * eps, lo), hi)
    with eval_mode(model):
        for _ in range(steps):
            g = _input_grad(model, x, y, normalize)
            x = torch.minimum(torch.maximum(x + alpha * g.sign(), lo), hi)
    return x.detach()


Attack = Callable[..., torch.Tensor]
ATTACKS: dict[str, Attack] = {"fgsm": fgsm, "pgd": pgd}


def eps_label(eps: float) -> str:
    """``"k/255"`` when ``eps`` is a whole number of grey levels, else ``repr(eps)``."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else repr(float(eps))


def robust_accuracy(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    eps_list: Sequence[float] = DEFAULT_EPS,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    batch_size: int = 128,
    max_images: int | None = None,
    seed: int = 0,
) -> dict:
    """Accuracy on clean and adversarial images: ``{"clean": acc, "n": N, "fgsm": {"1/255":
    acc, ...}, "pgd": {...}}``, over the first ``max_images`` uint8 ``[N, H, W, C]`` images.

    Runs on the device of the model's parameters, in fp32 and eval mode. Each (attack, eps)
    pair draws its PGD random starts from its own CPU generator seeded by ``(seed, pair)``.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}")
    if any(e < 0 for e in eps_list):
        raise UserError(f"eps must be >= 0, got {list(eps_list)}")
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise UserError(f"expected uint8 [N, H, W, C] images, got {images_uint8.dtype} "
                        f"{tuple(images_uint8.shape)}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    n = len(images_uint8) if max_images is None else min(max_images, len(images_uint8))
    if n == 0:
        raise UserError("no images to attack")
    device = next(model.parameters()).device
    normalize = pixel_normalizer(mean, std, device)
    pairs = [(a, e) for a in attacks for e in eps_list]
    gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in range(len(pairs))]
    correct = torch.zeros(len(pairs) + 1, dtype=torch.long, device=device)  # last: clean
    with eval_mode(model):
        for s in range(0, n, batch_size):
            xb = images_uint8[s : min(s + batch_size, n)].to(device)
            x01 = xb.permute(0, 3, 1, 2).float().div_(255.0)  # [B, C, H, W] in [0, 1]
            y = labels[s : min(s + batch_size, n)].to(device).long()
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                correct[-1] += (model(normalize(x01)).argmax(1) == y).sum()
            for i, (name, eps) in enumerate(pairs):
                x_adv = ATTACKS[name](model, x01, y, eps, normalize, generator=gens[i])
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    correct[i] += (model(normalize(x_adv)).argmax(1) == y).sum()
    acc = (correct.double() / n).tolist()
    out: dict = {"clean": acc[-1], "n": n}
    for i, (name, eps) in enumerate(pairs):
        out.setdefault(name, {})[eps_label(eps)] = acc[i]
    return out
