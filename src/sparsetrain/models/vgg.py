"""VGG with batch norm for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015).

Conv configurations A/D/E (VGG-11/16/19) as in torchvision, each 3x3 conv (bias-free) followed by
BN + ReLU and a 2x2 max pool after every stage. On a 32x32 input the five pools leave a 1x1x512
map, which is flattened into the single Linear head ``classifier`` common in CIFAR pruning and
sparse-training papers, instead of the 4096-wide ImageNet MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsetrain.models._registry import init_weights, register_model

__all__ = ["VGG", "VGG_CFGS"]

# "M" = 2x2 max pool, ints = output channels of a 3x3 conv-BN-ReLU.
VGG_CFGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64, 64, "M",
        128, 128, "M",
        256, 256, 256, 256, "M",
        512, 512, 512, 512, "M",
        512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """VGG-BN feature stack + flatten + ``Linear(512, num_classes)`` (CIFAR head)."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = int(v)
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _register(depth: int) -> None:
    name = f"vgg{depth}_bn"

    @register_model(name, input_size=(3, 32, 32), family="vgg")
    def factory(num_classes: int = 10) -> nn.Module:
        return VGG(VGG_CFGS[depth], num_classes=num_classes)

    factory.__name__ = name
    factory.__doc__ = f"VGG-{depth} with BN, CIFAR head (Simonyan & Zisserman 2015)."


for _depth in sorted(VGG_CFGS):
    _register(_depth)
