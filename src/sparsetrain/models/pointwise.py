"""A guard for strided 1×1 convolutions with few input channels (a oneDNN bug).

PyTorch 2.13's CPU build bundles oneDNN 3.12, whose 1×1 convolution *backward_weights* kernel
for a channels-last fp32 input with stride != 1 and fewer input channels than its channel block
(8 on AVX2, 16 on AVX-512) writes past its per-thread workspace (oneDNN issue #6035). Measured
on an AVX2-only AMD EPYC (family 25, session 5), one layer ``Conv2d(cin, 32, 1, stride=2)`` on a
[64, cin, 32, 32] channels-last input, ``.sum().backward()``: cin 2-7 abort the process with one
thread (``double free or corruption``); with two threads they give silently wrong weight
gradients (relative error 0.7-1.0) or hang; cin 1 and 8-40, bf16 autocast, NCHW and stride 1 are
fine; strides (1, 2) and 4 are affected too. The issue reports cin 8, 12 and 15 failing on
AVX-512. Such layers appear in channel-pruned ResNets (an EagleEye candidate can keep a few
channels of a stage, which feed the next stage's strided shortcut).

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
            and m.stride != (1, 1) and m.padding_mode == "zeros" and m.in_channels % 16 != 0)


def guard_strided_pointwise(model: nn.Module) -> int:
    """Switch every affected convolution of ``model`` to :class:`SubsampledPointwiseConv2d`
    in place; returns how many were switched."""
    n = 0
    for m in model.modules():
        if _affected(m):
            m.__class__ = SubsampledPointwiseConv2d
            n += 1
    return n
