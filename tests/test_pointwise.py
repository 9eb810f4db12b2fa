"""The strided 1×1 convolution guard (models/pointwise.py): same numbers, no oneDNN abort."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from torch import nn

from sparsetrain.models.pointwise import SubsampledPointwiseConv2d, guard_strided_pointwise


def test_guard_switches_only_affected_layers_and_keeps_the_numbers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 32, 1, stride=2, bias=False),   # affected
                          nn.Conv2d(32, 8, 1, stride=2),               # 32 inputs: left alone
                          nn.Conv2d(8, 5, 3, stride=2, padding=1),     # 3x3: left alone
                          nn.Conv2d(5, 4, 1, stride=(1, 2)))           # affected, with bias
    ref = nn.Sequential(*[nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                    m.padding, bias=m.bias is not None) for m in model])
    ref.load_state_dict(model.state_dict())
    ref.double()
    keys = list(model.state_dict())
    assert guard_strided_pointwise(model) == 2
    assert [type(m) is SubsampledPointwiseConv2d for m in model] == [True, False, False, True]
    assert list(model.state_dict()) == keys and model[0].stride == (2, 2)
    x = torch.randn(3, 6, 33, 31, dtype=torch.float64)  # odd sizes: ceil-division outputs
    model.double()
    assert torch.allclose(model(x), ref(x), atol=1e-12, rtol=0)


def test_guarded_backward_runs_in_channels_last_fp32() -> None:
    """The unguarded layer aborts the interpreter on some CPUs (torch 2.13, AVX2-only EPYC), so the
    guarded one runs in a subprocess and must finish."""
    code = textwrap.dedent("""
        import torch
        from sparsetrain.models.pointwise import guard_strided_pointwise
        torch.set_num_threads(1)
        conv = torch.nn.Sequential(torch.nn.Conv2d(6, 32, 1, stride=2, bias=False))
        assert guard_strided_pointwise(conv) == 1
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(64, 6, 32, 32).contiguous(memory_format=torch.channels_last)
        for _ in range(3):
            conv(x.requires_grad_()).sum().backward()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]


def test_eight_inputs_are_guarded_too() -> None:
    """oneDNN's AVX-512 kernel blocks channels by 16 (cin 8, 12, 15 fail there)."""
    model = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.Conv2d(16, 16, 1, stride=2))
    assert guard_strided_pointwise(model) == 1
    assert type(model[0]) is SubsampledPointwiseConv2d and type(model[1]) is nn.Conv2d


def test_guarded_weight_gradient_is_right_with_two_threads() -> None:
    """With two threads the unguarded kernel gives silently wrong weight gradients (or hangs):
    the guarded layer's gradient must match an fp64 reference."""
    code = textwrap.dedent("""
        import torch
        from sparsetrain.models.pointwise import guard_strided_pointwise
        torch.set_num_threads(2)
        torch.manual_seed(0)
        for cin in (2, 3, 6, 7, 8, 12):
            conv = torch.nn.Sequential(torch.nn.Conv2d(cin, 32, 1, stride=2, bias=False))
            ref = torch.nn.Conv2d(cin, 32, 1, stride=2, bias=False).double()
            ref.weight.data.copy_(conv[0].weight.data)
            guard_strided_pointwise(conv)
            conv = conv.to(memory_format=torch.channels_last)
            x = torch.randn(64, cin, 32, 32)
            conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
            ref(x.double()).square().sum().backward()
            err = (conv[0].weight.grad.double() - ref.weight.grad).abs().max()
            assert err <= 1e-4 * ref.weight.grad.abs().max(), (cin, float(err))
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]
