"""The evaluation suite of DESIGN.md §3.8 in one call: accuracy, calibration, OOD, robustness.

:func:`evaluate_model` takes a model and a uint8 test split and returns a JSON-serializable
dict. Clean predictions go through :class:`~sparsetrain.data.DeviceLoader` (the same
normalization and batching as evaluation during training), in the requested precision;
adversarial attacks always run in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.data.loader import DeviceLoader
from sparsetrain.errors import UserError
from sparsetrain.evaluate.calibration import accuracy_topk, ece_from_bins, nll, reliability_bins
from sparsetrain.evaluate.ood import OOD_SETS, aupr, auroc, make_ood_set, max_softmax_score
from sparsetrain.evaluate.robustness import DEFAULT_EPS, eval_mode, robust_accuracy
from sparsetrain.precision import autocast, resolve_device, resolve_precision

FOLDER_OOD = "folder"  # key of the OOD result for ``ood_folder_images``


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 512,
) -> torch.Tensor:
    """float32 logits ``[N, K]`` on the CPU of uint8 ``[N, H, W, C]`` images, in eval mode."""
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise UserError(f"expected uint8 [N, H, W, C] images, got {images_uint8.dtype} "
                        f"{tuple(images_uint8.shape)}")
    if images_uint8.shape[-1] != len(mean):
        raise UserError(f"images have {images_uint8.shape[-1]} channels but mean/std have "
                        f"{len(mean)}")
    labels = torch.zeros(len(images_uint8), dtype=torch.long)  # unused by the loader here
    data = ImageArrays(images_uint8.cpu(), labels, ())
    loader = DeviceLoader(data, batch_size, tuple(mean), tuple(std), train=False, device=device)
    plan = loader.plan(0)
    out = []
    with eval_mode(model):
        for i in range(len(loader)):
            x, _ = loader.batch(plan, i)
            with autocast(device, precision):
                out.append(model(x).float().cpu())
    return torch.cat(out)


def _ood_scores(
    model: nn.Module,
    names: Sequence[str],
    folder: torch.Tensor | None,
    test_images: torch.Tensor,
    scores_in: torch.Tensor,
    cap: int | None,
    seed: int,
    **predict,
) -> dict[str, dict[str, float]]:
    """AUROC/AUPR of the MSP score, in-distribution test set vs each OOD set."""
    m = len(test_images) if cap is None else min(cap, len(test_images))
    sets = {name: make_ood_set(name, test_images[:m].cpu(), seed) for name in names}
    if folder is not None:
        sets[FOLDER_OOD] = folder[: len(folder) if cap is None else cap]
    out = {}
    for name, images in sets.items():
        s_out = max_softmax_score(predict_logits(model, images, **predict))
        out[name] = {"auroc": auroc(scores_in, s_out), "aupr": aupr(scores_in, s_out),
                     "n": len(images)}
    return out


def evaluate_model(
    model: nn.Module,
    test_images_uint8: torch.Tensor,
    test_labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "auto",
    precision: str = "fp32",
    ood: Sequence[str] | None = None,
    ood_folder_images: torch.Tensor | None = None,
    ood_images: int | None = None,
    attacks: Sequence[str] | None = None,
    eps: Sequence[float] | None = None,
    attack_images: int = 1000,
    batch_size: int = 512,
    seed: int = 0,
    n_bins: int = 15,
) -> dict:
    """Accuracy, calibration, OOD detection and adversarial robustness of ``model``.

    - top-1/top-5, NLL, ECE and the reliability bins (Guo et al. 2017) over the whole test set;
    - OOD (Hendrycks & Gimpel 2017): max-softmax score of the test set vs each generated set in
      ``ood`` (``None``: every set of ``OOD_SETS``; ``[]``: none) built from the first
      ``ood_images`` test images (``None``: all), and vs ``ood_folder_images`` (uint8 NHWC,
      e.g. another data set, reported as ``"folder"``) when given;
    - FGSM/PGD accuracy (``attacks`` ``None``: both; ``eps`` ``None``: 1, 2, 4, 8 /255) on the
      first ``attack_images`` test images, in fp32; ``attack_images=0`` or ``attacks=[]`` skips.

    The model is moved to ``device`` (in place) and its train/eval mode is restored.
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    precision = resolve_precision(precision, dev)
    names = list(OOD_SETS) if ood is None else list(ood)
    unknown = [n for n in names if n not in OOD_SETS]
    if unknown:
        raise UserError(f"unknown OOD set(s) {unknown}; choose from {sorted(OOD_SETS)}")
    if len(test_labels) != len(test_images_uint8) or len(test_labels) == 0:
        raise UserError(f"need a non-empty test set with one label per image, got "
                        f"{len(test_images_uint8)} images and {len(test_labels)} labels")
    model.to(dev)
    predict = {"mean": mean, "std": std, "device": dev, "precision": precision,
               "batch_size": batch_size}
    labels = test_labels.cpu().long()
    logits = predict_logits(model, test_images_uint8, **predict)  # [N, K]
    bins = reliability_bins(logits, labels, n_bins, from_logits=True)
    acc = accuracy_topk(logits, labels, (1, 5))
    result: dict = {
        "n": len(labels),
        "precision": precision,
        "top1": acc["top1"],
        "top5": acc["top5"],
        "nll": nll(logits, labels),
        "ece": ece_from_bins(bins),
        "reliability": bins,
    }
    if names or ood_folder_images is not None:
        result["ood"] = _ood_scores(model, names, ood_folder_images, test_images_uint8,
                                    max_softmax_score(logits), ood_images, seed, **predict)
    attacks = ("fgsm", "pgd") if attacks is None else tuple(attacks)
    if attacks and attack_images > 0:
        result["robustness"] = robust_accuracy(
            model, test_images_uint8, labels, mean, std,
            eps_list=DEFAULT_EPS if eps is None else tuple(eps), attacks=attacks,
            batch_size=batch_size, max_images=attack_images, seed=seed,
        )
    return result
