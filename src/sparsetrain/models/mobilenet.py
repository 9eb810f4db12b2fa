"""MobileNets.

* MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
  Vision Applications", 2017): a 3x3 conv-BN-ReLU stem and 13 depthwise-separable blocks
  (3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU), global average pooling, ``fc``.
  ``mobilenet_v1_cifar`` only removes the stem's stride: the four stride-2 depthwise blocks then
  take a 32x32 input down to **2x2** before pooling (the usual CIFAR adaptation).
* MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  CVPR 2018) with torchvision's module names (``features.N...``, ``classifier.1``).
  ``mobilenet_v2_cifar`` sets the stem stride and the second stage's (t=6, c=24) stride to 1, so
  a 32x32 input ends at **4x4** before pooling.

``width`` scales every channel count, rounded to a multiple of 8 as in the reference models.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsetrain.models._registry import check_positive, init_weights, register_model

__all__ = ["InvertedResidual", "MobileNetV1", "MobileNetV2", "make_divisible"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (>= divisor), losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_act(
    in_ch: int,
    out_ch: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``Sequential(conv (no bias), BN, activation)`` -> names ``.0``, ``.1``, ``.2``."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        act(inplace=True),
    )


# MobileNetV1: (output channels, stride) of the 13 depthwise-separable blocks.
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNetV1 with BN (Howard et al. 2017); ``cifar=True`` makes the stem stride 1."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch, 3, stride=1 if cifar else 2)]
        for out, stride in _V1_BLOCKS:
            out_ch = make_divisible(out * width)
            layers.append(
                nn.Sequential(
                    conv_bn_act(in_ch, in_ch, 3, stride=stride, groups=in_ch),  # depthwise
                    conv_bn_act(in_ch, out_ch, 1),  # pointwise
                )
            )
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


class InvertedResidual(nn.Module):
    """1x1 expand (if t != 1) -> 3x3 depthwise -> 1x1 linear projection; residual if same shape."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


# MobileNetV2: expansion t, channels c, repeats n, first stride s.
_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018); ``cifar=True``: stem and stage-2 strides set to 1."""

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        dropout: float = 0.2,
        cifar: bool = False,
    ) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width)
        last_ch = make_divisible(1280 * max(1.0, width))
        stem_stride = 1 if cifar else 2
        layers: list[nn.Module] = [conv_bn_act(3, in_ch, 3, stride=stem_stride, act=nn.ReLU6)]
        for stage, (t, c, n, s) in enumerate(_V2_SETTING):
            out_ch = make_divisible(c * width)
            first_stride = 1 if (cifar and stage == 1) else s
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, first_stride if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(conv_bn_act(in_ch, last_ch, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_ch, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("mobilenet_v1", input_size=(3, 224, 224), family="mobilenet")
def mobilenet_v1(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """MobileNetV1 (Howard et al. 2017), ImageNet layout."""
    check_positive("mobilenet_v1", "width", width)
    return MobileNetV1(num_classes=num_classes, width=width)


@register_model("mobilenet_v1_cifar", input_size=(3, 32, 32), family="mobilenet")
def mobilenet_v1_cifar(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """MobileNetV1 (Howard et al. 2017), stem stride 1 for 32x32 inputs (ends at 2x2)."""
    check_positive("mobilenet_v1_cifar", "width", width)
    return MobileNetV1(num_classes=num_classes, width=width, cifar=True)


@register_model("mobilenet_v2", input_size=(3, 224, 224), family="mobilenet")
def mobilenet_v2(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), torchvision-compatible names."""
    check_positive("mobilenet_v2", "width", width)
    return MobileNetV2(num_classes=num_classes, width=width)


@register_model("mobilenet_v2_cifar", input_size=(3, 32, 32), family="mobilenet")
def mobilenet_v2_cifar(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), stem and stage-2 stride 1 (ends at 4x4)."""
    check_positive("mobilenet_v2_cifar", "width", width)
    return MobileNetV2(num_classes=num_classes, width=width, cifar=True)
