"""Device-resident loader: the whole uint8 dataset lives on the training device.

Augmentation (random crop with 4-pixel reflect or zero padding, horizontal flip, normalization)
runs on whole batches as index arithmetic plus one gather, in the spirit of airbench: no
per-image Python in the hot loop and no padded copy of the data set.

Every random decision of an epoch (the order and each image's crop offset and flip) is drawn at
the start of the epoch from a generator seeded by ``(seed, epoch)``. The data-order state is
therefore just ``(epoch, batch index)``: a resumed run regenerates the plan and skips ahead,
and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.errors import UserError

_PADDING_MODES = ("reflect", "zeros")


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, epoch, salt)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1))
    return g


@dataclass(frozen=True)
class EpochPlan:
    """The random decisions of one epoch for this rank: order, crop offsets, flips."""

    epoch: int
    order: torch.Tensor  # int64 [n_rank]
    dy: torch.Tensor  # int64 [n_rank], 0..2*pad
    dx: torch.Tensor  # int64 [n_rank]
    flip: torch.Tensor  # bool [n_rank]


class DeviceLoader:
    """Batches from an :class:`ImageArrays` held on ``device``.

    ``train=True``: per-epoch shuffle, random crop (pad ``pad`` pixels) and flip, drop_last.
    ``train=False``: sequential order, no augmentation, last partial batch kept.
    Output: float ``[B, C, H, W]`` normalized images (channels_last when asked) and int64 labels.
    Under data parallelism each rank takes ``perm[rank::world_size]`` of a permutation that is
    identical on all ranks (padded by wrap-around so all ranks have the same number of batches).
    """

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        pad: int = 4,
        padding_mode: str = "reflect",
        flip: bool = True,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if padding_mode not in _PADDING_MODES:
            raise UserError(f"unknown padding mode {padding_mode!r}; choose from {_PADDING_MODES}")
        if len(data) == 0:
            raise UserError("the dataset is empty")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # uint8 [N, H, W, C]
        self.labels = data.labels.to(self.device)
        self.n, self.h, self.w, self.c = self.images.shape
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.pad = pad if train else 0
        self.padding_mode = padding_mode
        self.flip = flip and train
        self.channels_last = channels_last
        self.dtype = dtype
        self.rank, self.world_size = rank, world_size
        if train and self.per_rank < batch_size:
            raise UserError(
                f"batch size {batch_size} is larger than the {self.per_rank} training images "
                "per process"
            )
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        # x_norm = x_uint8 * scale + shift, as one fused multiply-add on the batch
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1)
        self._ar_h = torch.arange(self.h, device=self.device)
        self._ar_w = torch.arange(self.w, device=self.device)

    @property
    def per_rank(self) -> int:
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        if self.train:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def plan(self, epoch: int) -> EpochPlan:
        """Draw every random decision of ``epoch`` (identical on all ranks before sharding)."""
        if not self.train:
            order = torch.arange(self.n)[self.rank :: self.world_size]
            zeros = torch.zeros(len(order), dtype=torch.long, device=self.device)
            return EpochPlan(epoch, order.to(self.device), zeros, zeros, zeros.bool())
        g = epoch_generator(self.seed, epoch)
        perm = torch.randperm(self.n, generator=g)
        total = self.per_rank * self.world_size
        if total > self.n:  # pad by wrap-around so every rank has as many samples
            perm = torch.cat([perm, perm[: total - self.n]])
        dy = torch.randint(0, 2 * self.pad + 1, (total,), generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (total,), generator=g)
        flip = torch.rand(total, generator=g) < 0.5
        if not self.flip:
            flip.zero_()
        sl = slice(self.rank, None, self.world_size)
        # on the device once per epoch: a batch is then a slice, with no host-device copy
        return EpochPlan(epoch, *(t[sl].to(self.device) for t in (perm, dy, dx, flip)))

    def batch(self, plan: EpochPlan, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of ``plan``: (normalized images [B, C, H, W], labels [B])."""
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        idx = plan.order[sl]
        if self.train:
            x = self._augment(idx, plan.dy[sl], plan.dx[sl], plan.flip[sl])
        else:
            x = self.images[idx]  # [B, H, W, C]
        return self._normalize(x), self.labels[idx]

    def epoch(self, epoch: int, start: int = 0):
        """Iterate over the batches of ``epoch``, starting at batch ``start`` (for resume)."""
        plan = self.plan(epoch)
        for i in range(start, len(self)):
            yield self.batch(plan, i)

    def __iter__(self):
        return self.epoch(0)

    def _augment(
        self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        # Source row/col of every output pixel, in the coordinates of the unpadded image:
        # output (r, c) of a crop at offset (dy, dx) in the padded image reads padded pixel
        # (dy + r, dx + c), i.e. unpadded pixel (dy + r - pad, dx + c - pad).
        rows = dy[:, None] + self._ar_h[None, :] - self.pad  # [B, H]
        cols = dx[:, None] + self._ar_w[None, :] - self.pad  # [B, W]
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        if self.padding_mode == "reflect":
            rows = _reflect(rows, self.h)
            cols = _reflect(cols, self.w)
            return self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        valid = ((rows >= 0) & (rows < self.h))[:, :, None] & ((cols >= 0) & (cols < self.w))[
            :, None, :
        ]  # [B, H, W]
        rows, cols = rows.clamp(0, self.h - 1), cols.clamp(0, self.w - 1)
        x = self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        return x * valid[..., None].to(x.dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW: channels_last for free
        if not self.channels_last:
            x = x.contiguous()
        return torch.addcmul(self._shift, x.to(torch.float32), self._scale).to(self.dtype)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect-pad index map (no edge repeat), valid for pads smaller than ``n``."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


class StreamLoader:
    """The :class:`DeviceLoader` interface over a streaming DataLoader with worker processes,
    for image folders too large for memory. Workers decode and augment per image (our own
    transforms, seeded by (seed, epoch, index)) and persist across epochs; batches stay uint8
    until the device, where they are normalized."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        workers: int = 2,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        from sparsetrain.data.stream import epoch_order

        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.mean, self.std, self.seed, self.workers = mean, std, seed, workers
        self.device, self.channels_last, self.dtype = torch.device(device), channels_last, dtype
        self.rank, self.world_size = rank, world_size
        n = len(epoch_order(dataset, train=train, seed=seed, epoch=0, rank=rank,
                            world_size=world_size))
        self._len = n // batch_size if train else -(-n // batch_size)
        self._batches, self._active = None, None  # one persistent DataLoader; its current plan

    def __len__(self) -> int:
        return self._len

    def plan(self, epoch: int) -> dict:
        return {"epoch": epoch, "it": None, "next": -1}

    def batch(self, plan: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from sparsetrain.data.stream import StreamBatches, normalize_batch

        if self._batches is None:
            self._batches = StreamBatches(
                self.dataset, self.batch_size, train=self.train, seed=self.seed,
                workers=self.workers, rank=self.rank, world_size=self.world_size)
        if plan["it"] is None or plan["next"] != i or self._active is not plan:
            plan["it"] = self._batches.epoch(plan["epoch"], start_batch=i)  # or a jump (resume)
            self._active = plan
        x, y = next(plan["it"])
        plan["next"] = i + 1
        x = x.to(self.device, non_blocking=True)
        return (normalize_batch(x, self.mean, self.std, self.dtype, self.channels_last),
                y.to(self.device, non_blocking=True))
