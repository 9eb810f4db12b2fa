"""The in-memory data set type and a stratified train/validation split.

:class:`ImageArrays` holds a whole split as one uint8 ``[N, H, W, C]`` tensor (NHWC: a
``permute(0, 3, 1, 2)`` gives channels_last NCHW without a copy) plus int64 labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsetrain.errors import UserError


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous; identity instead
class ImageArrays:
    """A decoded split: images uint8 ``[N, H, W, C]`` (contiguous), labels int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    checksum: str = ""  # fingerprint of the source the arrays were read from

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.images.is_contiguous():
            object.__setattr__(self, "images", self.images.contiguous())
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of class names (labels lie in ``range(num_classes)``)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)

    def subset(self, idx: torch.Tensor | Sequence[int]) -> ImageArrays:
        """The images and labels at ``idx`` (a copy), same classes and checksum."""
        index = torch.as_tensor(idx, dtype=torch.long)
        return ImageArrays(
            images=self.images[index].contiguous(),
            labels=self.labels[index].clone(),
            classes=self.classes,
            checksum=self.checksum,
        )


def train_val_split(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into sorted (train, val) index tensors.

    Stratified: each class gives ``val_size * n_class / N`` samples, rounded by largest
    remainder (ties broken by a seeded shuffle of the classes) so the total is exactly
    ``val_size``. Deterministic for a given ``seed``.
    """
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    n = int(labels.numel())
    if isinstance(val_size, bool) or not isinstance(val_size, int):
        raise UserError(f"val_size must be an integer, got {val_size!r}")
    if val_size < 0 or val_size >= n:
        raise UserError(f"val_size={val_size} is out of range: need 0 <= val_size < {n}")
    g = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    missing = val_size - int(quota.sum())
    if missing > 0:
        # largest remainder first; a seeded shuffle decides between equal remainders
        tiebreak = torch.randperm(len(classes), generator=g)
        remainder = exact - quota.double()
        order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), int(tiebreak[i])))
        for i in order[:missing]:
            quota[i] += 1
    val_parts = []
    for cls, k in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == cls).reshape(-1)
        pick = torch.randperm(len(members), generator=g)[:k]
        val_parts.append(members[pick])
    val = torch.cat(val_parts) if val_parts else torch.empty(0, dtype=torch.long)
    val = torch.sort(val).values
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    train = torch.nonzero(~is_val).reshape(-1)
    return train, val
