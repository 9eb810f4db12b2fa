"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: depth ``d = 6n + 4``, three stages of ``n`` pre-activation basic blocks
(BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) with widths ``16k, 32k, 64k`` after a 3x3 stem conv
3 -> 16; a final BN-ReLU, global average pooling and a Linear ``fc``. When a block changes shape
its shortcut is a 1x1 conv applied to the pre-activated input (as in the authors' code).
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsetrain.errors import UserError
from sparsetrain.models._registry import init_weights, register_model

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the two convs."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(pre)
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 inputs (Zagoruyko & Komodakis 2016)."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UserError(f"WideResNet depth must be 6n+4 (16, 22, 28, ...), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise UserError(f"WideResNet widen factor must be a positive int, got {widen_factor!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise UserError(f"WideResNet dropout must be a number in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"WideResNet dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, float(dropout)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.avgpool(x).flatten(1))


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn{depth}_{widen_factor}"

    @register_model(name, input_size=(3, 32, 32), family="wrn")
    def factory(num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes=num_classes, dropout=dropout)

    factory.__name__ = name
    factory.__doc__ = f"WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016)."


for _depth, _k in ((28, 10), (28, 2), (22, 2), (16, 8), (40, 2), (16, 4)):
    _register(_depth, _k)
