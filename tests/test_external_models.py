"""Optional timm / torchvision adapters (models/external.py): a one-line error naming the
package where it cannot be imported (torchvision's compiled ops do not load on the CPU wheel
here); where it can, the architecture builds with the requested classes and trains sparsely."""

from __future__ import annotations

import importlib

import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.models import create_model, model_info
from sparsetrain.sparsity.methods import create_method


def importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:
        return False
    return True


CASES = [("tv/resnet18", "torchvision"), ("timm/resnet18", "timm")]


@pytest.mark.parametrize(("name", "package"), CASES)
def test_missing_package_is_a_one_line_error(name: str, package: str) -> None:
    if importable(package):
        pytest.skip(f"{package} is importable here")
    assert model_info(name).input_size == (3, 224, 224)  # no import needed for the facts
    with pytest.raises(UserError, match=f"needs {package}") as e:
        create_model(name, num_classes=10)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("name", "package"), CASES)
def test_adapter_builds_and_sparsifies(name: str, package: str) -> None:
    if not importable(package):
        pytest.skip(f"{package} cannot be imported here")
    model = create_model(name, num_classes=10)
    assert model.arch_name == name and model.input_size == (3, 224, 224)
    m = create_method("static", model, density=0.2, budget="erk").prepare()
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 10) and m.masks.density() == pytest.approx(0.2, abs=1e-3)
    with pytest.raises(UserError, match="has no model"):
        create_model(name.split("/")[0] + "/no_such_net")
