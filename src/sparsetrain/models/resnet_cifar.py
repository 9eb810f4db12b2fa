"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

Depth ``6n + 2`` with basic blocks in three stages of widths ``16w, 32w, 64w``; a 3x3 stem conv
3 -> 16w + BN + ReLU; global average pooling and a Linear classifier ``fc``. Shortcuts that change
shape are a 1x1 conv (stride 2 on down-sampling blocks) + BN, i.e. the paper's "option B".

Parameter names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv1/bn1/conv2/bn2``,
``layer{2,3}.0.shortcut.0`` (conv) / ``.1`` (BN), ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsetrain.errors import UserError
from sparsetrain.models._registry import init_weights, register_model

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN (option B) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, width multiplier ``width`` (He et al. 2016)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 1) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UserError(f"CIFAR ResNet width must be a positive integer, got {width!r}")
        n = (depth - 2) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(depth: int, fixed_width: int | None = None) -> None:
    if fixed_width is None:
        name = f"resnet{depth}"

        @register_model(name, input_size=(3, 32, 32), family="resnet_cifar")
        def factory(num_classes: int = 10, width: int = 1) -> nn.Module:
            return CifarResNet(depth, num_classes=num_classes, width=width)

    else:
        name = f"resnet{depth}_w{fixed_width}"

        @register_model(name, input_size=(3, 32, 32), family="resnet_cifar")
        def factory(num_classes: int = 10) -> nn.Module:
            return CifarResNet(depth, num_classes=num_classes, width=fixed_width)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), option-B shortcuts."


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
for _depth, _width in ((20, 2), (20, 4), (32, 2), (32, 4), (56, 2)):
    _register(_depth, _width)
