"""ImageNet ResNet-18/34/50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Module names and parameter shapes match torchvision's ``resnet18/34/50`` exactly, so their
state dicts load with ``strict=True``: ``conv1`` (7x7 s2), ``bn1``, ``relu``, ``maxpool``,
``layer1..layer4``, ``avgpool``, ``fc``. Bottlenecks put the stride on the 3x3 conv (ResNet v1.5).

The ``*_cifar`` variants use a 3x3 stride-1 ``conv1`` and no max pool (``maxpool`` is an
``nn.Identity`` so the module tree is unchanged) for 32x32 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsetrain.models._registry import init_weights, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; 1x1 conv-BN ``downsample`` shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4; conv-BN each, ReLU after the sum."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-layout ResNet; ``cifar_stem=True`` swaps in a 3x3 s1 stem and drops the pool."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        cifar_stem: bool = False,
    ) -> None:
        super().__init__()
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        in_ch = 64
        stages = []
        for i, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


_SPECS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


def _register(depth: int, cifar: bool) -> None:
    block, layers = _SPECS[depth]
    name = f"resnet{depth}_cifar" if cifar else f"resnet{depth}"
    size = (3, 32, 32) if cifar else (3, 224, 224)

    if cifar:

        @register_model(name, input_size=size, family="resnet")
        def factory(num_classes: int = 10) -> nn.Module:
            return ResNet(block, layers, num_classes=num_classes, cifar_stem=True)

    else:

        @register_model(name, input_size=size, family="resnet")
        def factory(num_classes: int = 1000) -> nn.Module:
            return ResNet(block, layers, num_classes=num_classes, cifar_stem=False)

    factory.__name__ = name
    factory.__doc__ = f"ResNet-{depth} (He et al. 2016), {'CIFAR' if cifar else 'ImageNet'} stem."


for _depth in sorted(_SPECS):
    for _cifar in (False, True):
        _register(_depth, _cifar)
