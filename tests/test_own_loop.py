"""Any nn.Module in a plain PyTorch loop: a tiny transformer block sparsified with GraNet,
attention projections included through ``include``; scheduled methods need the run length at
construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.sparsity.methods import create_method


class TinyBlock(nn.Module):
    """Conv1d token embedding, self-attention, MLP, classifier: a non-ResNet model."""

    def __init__(self, d: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv1d(3, d, kernel_size=3, padding=1)
        self.attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, T]
        h = self.embed(x).transpose(1, 2)  # [B, T, d]
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        h = h + self.mlp(h)
        return self.head(h.mean(1))


PATTERNS = ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "mlp.*.weight",
            "head.weight"]


def test_granet_sparsifies_a_transformer_block_in_a_plain_loop() -> None:
    torch.manual_seed(0)
    model = TinyBlock()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 60
    method = create_method("granet", model, opt, density=0.2, include=PATTERNS, delta_t=5,
                           t_end=30, total_steps=steps, steps_per_epoch=10, seed=0)
    assert sorted(method.masks.masks) == sorted(
        ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "mlp.0.weight",
         "mlp.2.weight", "head.weight"])
    method.prepare()
    method.attach()  # optimizer hooks: the loop below is plain PyTorch
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 8, generator=g)
    y = (x.mean((1, 2)) > 0).long() + 2 * (x[:, 0].mean(1) > 0).long()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert method.step_count == steps
    assert method.masks.density() == pytest.approx(0.2, abs=2e-3)  # reached at t_end = 30
    updates = [e for e in method.log if e["event"] != "init"]
    assert len(updates) == steps // 5 and any(e["grown"] > 0 for e in updates)  # regrowth ran
    for n, p in method.masks.params.items():
        off = method.masks.masks[n] == 0
        assert torch.all(p[off] == 0), n
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert torch.all(v[off] == 0), n
    assert losses[-1] < losses[0]


def test_conv1d_and_conv3d_are_masked_by_default() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    assert sorted(create_method("static", model, density=0.5).masks.masks) == ["0.weight",
                                                                                "2.weight"]
    vol = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    assert "0.weight" in create_method("static", vol, density=0.5).masks.masks


@pytest.mark.parametrize("name", ["gmp", "granet", "rigl", "set"])
def test_scheduled_methods_need_the_run_length_at_construction(name: str) -> None:
    model = TinyBlock()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="needs total_steps and steps_per_epoch"):
        create_method(name, model, opt, density=0.1)
    create_method(name, model, None, density=0.1)  # recipe validation: no optimizer yet
