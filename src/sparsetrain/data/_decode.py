"""Decoding for the streaming loader's draft path: JPEG DCT-domain downscaling, crop, resize.

Pillow decodes a whole JPEG; what it can skip is resolution: ``Image.draft`` asks libjpeg for
the image at 1/2, 1/4 or 1/8 scale, computed in the DCT domain (cheaper inverse DCT, colour
conversion and upsampling; the entropy decoding of every coefficient remains, so the saving
is well below the pixel ratio). Cropping before decoding (libjpeg-turbo's
``jpeg_crop_scanline``/``jpeg_skip_scanlines``, as DALI's CPU decoder and FFCV use) is not
exposed by Pillow, so it is not done here (stopping at the crop's bottom row through Pillow's
private decoder API would save about a fifth of the decode; BENCHMARKS.md, issue 19).

Resizing uses torch's antialiased bilinear filter on uint8 channels-last tensors (AVX2), which
reproduces Pillow's ``BILINEAR`` resize to within rounding at about half its cost; crop boxes
that fall between pixels of a reduced image keep Pillow's fractional-box resize.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DCT_SCALES = (8, 4, 2)


def draft_scale(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """The largest ``s`` in (8, 4, 2, 1) with the crop still at least the output at 1/s:
    ``crop_w / s >= out_w`` and ``crop_h / s >= out_h`` (so the final resize never upsamples
    more than a full decode would)."""
    for s in DCT_SCALES:
        if crop_w >= s * out_w and crop_h >= s * out_h:
            return s
    return 1


def decode_reduced(img: Any, scale: int) -> tuple[Any, int]:
    """``img`` (opened, not yet decoded) decoded to RGB at 1/``scale`` where it is a JPEG,
    else in full; returns the image and the scale actually used (1 or ``scale``)."""
    used = 1
    if scale > 1 and getattr(img, "format", None) == "JPEG":
        w, h = img.size
        # Pillow picks the largest of 8, 4, 2, 1 not above min(w // req_w, h // req_h); with
        # req = size // scale that is exactly ``scale`` whenever the crop fits (size >= 2*scale)
        res = img.draft("RGB", (w // scale, h // scale))
        if res is not None:
            used = round(w / res[1][2])
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img, used


def _interpolate(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 ``[C, h, w]`` (any strides) to ``[C, out_h, out_w]`` in channels-last memory."""
    x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if x.shape[-2:] == (out_h, out_w):
        return x[0]
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def resize_box(img: Any, box: tuple[int, int, int, int], scale: int,
               out: tuple[int, int]) -> torch.Tensor:
    """Crop ``box = (top, left, h, w)`` given in original-image coordinates from ``img``
    decoded at 1/``scale`` (a PIL image, or a uint8 ``[C, H, W]`` tensor at scale 1) and
    resize it to ``out = (out_h, out_w)``: uint8 ``[C, out_h, out_w]``, channels-last memory."""
    top, left, h, w = box
    out_h, out_w = out
    if isinstance(img, torch.Tensor):
        return _interpolate(img[:, top : top + h, left : left + w], out_h, out_w)
    if scale == 1:
        arr = np.array(img.crop((left, top, left + w, top + h)))  # [h, w, 3], writable copy
        return _interpolate(torch.from_numpy(arr).permute(2, 0, 1), out_h, out_w)
    from PIL import Image

    reduced = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
    arr = np.array(img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=reduced))
    return torch.from_numpy(arr).permute(2, 0, 1)


def torchvision_decode(path: str) -> torch.Tensor:
    """uint8 ``[3, H, W]`` decoded by torchvision.io (libjpeg-turbo, or nvJPEG on a GPU build)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def has_torchvision_io() -> bool:
    """Whether the optional torchvision.io decoder can be imported here."""
    try:
        import torchvision.io  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True
