"""A guard for strided 1×1 convolutions with few input channels (a oneDNN bug).

With PyTorch 2.13's CPU build on an AVX2-only AMD EPYC (family 25, no AVX-512: the machine of
session 5), the fp32 backward of a 1×1 convolution with stride 2 and fewer than 8 input
channels in channels-last format corrupts the heap
(``double free or corruption`` / ``free(): invalid next size``, the process aborts). Such
convolutions appear in channel-pruned ResNets (an EagleEye candidate can keep 3-7 channels of
a stage, which feed the next stage's strided shortcut). Measured: cin 3-7 abort, cin 8-40 and
bf16 autocast do not; contiguous (NCHW) format does not. Reproduce with one layer:
``Conv2d(6, 32, 1, stride=2)`` in channels-last on a [64, 6, 32, 32] input, ``.sum().backward()``.

A 1×1 convolution with stride s and no padding reads only every s-th pixel, so it equals a
stride-1 convolution of ``x[..., ::s, ::s]``: the same numbers, and a kernel that works.
:func:`guard_strided_pointwise` switches the affected layers to that form in place; their
parameters, state-dict keys and ``stride`` attribute (which FLOPs counters read) stay as they
were.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1×1, zero-padding, strided convolution computed as subsample then stride 1."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(input[..., ::sh, ::sw], weight, bias, 1, 0, 1, self.groups)


def _affected(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding == (0, 0)
            and m.stride != (1, 1) and m.padding_mode == "zeros" and m.in_channels % 8 != 0)


def guard_strided_pointwise(model: nn.Module) -> int:
    """Switch every affected convolution of ``model`` to :class:`SubsampledPointwiseConv2d`
    in place; returns how many were switched."""
    n = 0
    for m in model.modules():
        if _affected(m):
            m.__class__ = SubsampledPointwiseConv2d
            n += 1
    return n
