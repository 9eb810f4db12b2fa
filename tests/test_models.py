"""Tests for the model zoo: registry behaviour, forward/backward of every model, exact sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models import create_model, list_models, model_info, register_model

ALL_MODELS = list_models()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def _meta_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build on the meta device: shapes only, no memory, no init cost (for counting)."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes)


def _test_input_hw(name: str) -> int:
    size = model_info(name).input_size[1]
    return 64 if size == 224 else size  # ImageNet-stem models get 64x64 to stay fast


# --------------------------------------------------------------------------- registry


def test_list_models_sorted_and_filtered() -> None:
    assert sorted(ALL_MODELS) == ALL_MODELS
    assert len(ALL_MODELS) == len(set(ALL_MODELS)) >= 29
    resnets = list_models("resnet*")
    assert resnets and all(n.startswith("resnet") for n in resnets)
    assert "resnet20" in resnets and "resnet50_cifar" in resnets and "vgg16_bn" not in resnets
    wrns = ["wrn16_4", "wrn16_8", "wrn22_2", "wrn28_10", "wrn28_2", "wrn40_2"]
    assert list_models("wrn*") == wrns
    assert list_models("no_such_*") == []


def test_unknown_name_raises_user_error_with_suggestions() -> None:
    with pytest.raises(UserError) as exc:
        create_model("resnet21")
    msg = str(exc.value)
    assert "resnet21" in msg and "resnet20" in msg and "\n" not in msg
    with pytest.raises(UserError, match="nope"):
        model_info("nope")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(UserError, match="resnet20"):

        @register_model("resnet20")
        def _again(num_classes: int = 10) -> nn.Module:
            return nn.Linear(1, num_classes)

    assert model_info("resnet20").family == "resnet_cifar"


def test_bad_kwargs_raise_user_error() -> None:
    with pytest.raises(UserError, match="widht"):
        create_model("resnet20", widht=2)
    with pytest.raises(UserError, match="width"):
        create_model("resnet20", width=0)
    with pytest.raises(UserError, match="width"):
        create_model("mobilenet_v1", width=-1.0)
    with pytest.raises(UserError, match="dropout"):
        create_model("wrn16_4", dropout=1.5)
    with pytest.raises(UserError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_model_info_and_attributes() -> None:
    info = model_info("resnet50")
    assert (info.name, info.family, info.input_size) == ("resnet50", "resnet", (3, 224, 224))
    assert info.default_num_classes == 1000
    assert model_info("resnet20").default_num_classes == 10
    with pytest.raises(AttributeError):
        info.name = "x"  # type: ignore[misc]  # frozen
    model = create_model("resnet20", num_classes=7)
    assert model.input_size == (3, 32, 32) and model.arch_name == "resnet20"
    assert model.fc.out_features == 7
    assert _meta_model("resnet18").fc.out_features == 1000  # None -> registered default


def test_width_kwarg() -> None:
    with torch.device("meta"):
        wide = create_model("resnet20", width=2)
    assert _n_params(wide) == _n_params(_meta_model("resnet20_w2")) == 1_084_586
    assert wide.conv1.out_channels == 32 and wide.fc.in_features == 128
    with pytest.raises(UserError, match="width"):  # fixed-width variants take no width option
        create_model("resnet20_w2", width=4)


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    model.train()
    c = model_info(name).input_size[0]
    hw = _test_input_hw(name)
    out = model(torch.randn(2, c, hw, hw))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        # No parameter here may legitimately get an all-zero gradient: every one lies on a path
        # through a nonlinearity to the logits, and every BN normalises over >= 8 values.
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize(
    ("name", "hw"), [("vgg19_bn", 1), ("mobilenet_v1_cifar", 2), ("mobilenet_v2_cifar", 4)]
)
def test_cifar_final_feature_map(name: str, hw: int) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (hw, hw)


# --------------------------------------------------------------------------- exact sizes

# CIFAR ResNet-20 (n = 3 blocks per stage, widths 16/32/64), Conv2d + Linear weights:
#   stem      3*16*9                      =     432
#   stage 1   6 convs * 16*16*9 (2,304)   =  13,824
#   stage 2   16*32*9 + 5 * 32*32*9       =  50,688   (4,608 + 5 * 9,216)
#   shortcut  16*32                       =     512
#   stage 3   32*64*9 + 5 * 64*64*9       = 202,752   (18,432 + 5 * 36,864)
#   shortcut  32*64                       =   2,048
#   fc        64*10                       =     640
#   total                                 = 270,896
# BN weight+bias: 2 * (16 + 6*16 + 6*32 + 32 + 6*64 + 64) = 2 * 784 = 1,568; fc bias 10
#   -> all parameters: 270,896 + 1,568 + 10 = 272,474.
# VGG-19-BN / 10 classes: conv weights 1,728 + 36,864 + 73,728 + 147,456 + 294,912
#   + 3 * 589,824 + 1,179,648 + 3 * 2,359,296 + 4 * 2,359,296 = 20,018,880;
#   BN 2 * (2*64 + 2*128 + 4*256 + 8*512) = 11,008; classifier 512*10 + 10 = 5,130
#   -> 20,035,018.
EXACT_COUNTS: dict[str, tuple[int | None, int]] = {
    # name: (num_classes or None for the default, total parameters)
    "resnet20": (10, 272_474),
    "resnet56": (10, 855_770),
    "resnet20_w4": (10, 4_327_754),
    "wrn28_10": (10, 36_479_194),
    "vgg19_bn": (10, 20_035_018),
    "resnet18": (1000, 11_689_512),
    "resnet34": (1000, 21_797_672),
    "resnet50": (1000, 25_557_032),
    "resnet18_cifar": (10, 11_173_962),
    "mobilenet_v1": (1000, 4_231_976),
    "mobilenet_v2": (1000, 3_504_872),
}


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS))
def test_exact_parameter_counts(name: str) -> None:
    num_classes, expected = EXACT_COUNTS[name]
    assert _n_params(_meta_model(name, num_classes)) == expected


def test_resnet20_conv_linear_weights() -> None:
    model = _meta_model("resnet20", 10)
    assert _conv_linear_weights(model) == 270_896
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["fc.weight"] == (10, 64)
    assert shapes["layer1.0.conv1.weight"] == (16, 16, 3, 3)
    assert shapes["layer1.0.bn2.weight"] == (16,)
    assert shapes["layer2.0.shortcut.0.weight"] == (32, 16, 1, 1)
    assert shapes["layer2.0.shortcut.1.running_mean"] == (32,)
    assert shapes["layer3.0.shortcut.0.weight"] == (64, 32, 1, 1)
    assert not any(k.startswith(("layer1.0.shortcut", "layer2.1.shortcut")) for k in shapes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)


def test_resnet50_state_dict_layout() -> None:
    sd = _meta_model("resnet50").state_dict()
    assert len(sd) == 320
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.num_batches_tracked": (),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_mean": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.running_var": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    model = _meta_model("resnet50")
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    cifar = _meta_model("resnet50_cifar", 1000)
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    assert len(cifar.state_dict()) == 320


def test_mobilenet_v2_state_dict_layout() -> None:
    sd = _meta_model("mobilenet_v2").state_dict()
    assert len(sd) == 314
    expected = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.3.running_var": (24,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key


def test_init_scheme() -> None:
    torch.manual_seed(0)
    model = create_model("vgg11_bn")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
    conv = model.features[0]
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert bool((model.classifier.bias == 0).all())


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_loads_torchvision_state_dict(name: str) -> None:
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = getattr(tv_models, name)().eval()
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
