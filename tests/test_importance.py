"""Channel importances beside L1/L2 (structured/groups.py): BN-scale, Taylor, FPGM and LAMP on
hand-set weights of a ResNet-20, each checked against its formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.structured import accumulate_gradients, prunable_groups, prune_model
from sparsetrain.structured.groups import _filter_scores, channel_importance, kept_indices

GROUP = "layer1.0.conv1"  # a plain group: conv1's filters, bn1, conv2's input channels


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet20")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(-1, 1)
    return m


def _group(model: nn.Module):
    return next(g for g in prunable_groups(model) if g.name == GROUP)


def _top(score: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.sort(-score, stable=True).indices[:k].tolist())


def test_bn_scale_keeps_the_largest_gammas(model: nn.Module) -> None:
    g = _group(model)
    assert g.out_layers == (GROUP,)
    gamma = model.layer1[0].bn1.weight.detach().double().abs()
    assert torch.equal(channel_importance(g, "bn_scale"), gamma)
    kept = kept_indices([g], {GROUP: 0.5}, "bn_scale")[GROUP]
    assert kept == _top(gamma, 8)


def test_fpgm_scores_are_summed_distances_to_the_other_filters(model: nn.Module) -> None:
    w = model.layer1[0].conv1.weight.detach().double().flatten(1)
    by_hand = torch.tensor([sum(float((w[i] - w[j]).norm()) for j in range(16))
                            for i in range(16)], dtype=torch.float64)
    got = channel_importance(_group(model), "fpgm")
    torch.testing.assert_close(got, by_hand)
    # a filter at the centre of the others is the most redundant one: pruned first
    with torch.no_grad():
        model.layer1[0].conv1.weight[5] = model.layer1[0].conv1.weight.mean(0)
    kept = kept_indices([_group(model)], {GROUP: 1 / 16}, "fpgm")[GROUP]
    assert 5 not in kept and len(kept) == 15


def test_taylor_is_the_summed_weight_times_gradient(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(2)]
    with pytest.raises(UserError, match="gradients"):
        channel_importance(_group(model), "taylor")
    mode = model.training
    accumulate_gradients(model, batches)
    assert model.training == mode  # the mode is restored
    conv = model.layer1[0].conv1
    by_hand = (conv.weight * conv.weight.grad).detach().double().abs().flatten(1).sum(1)
    torch.testing.assert_close(channel_importance(_group(model), "taylor"), by_hand)
    pruned = prune_model(model, {GROUP: 0.25}, "taylor")
    assert pruned.pruned_structure[GROUP] == _top(by_hand, 12)


def test_lamp_formula_and_its_equivalence_to_l2_within_a_group(model: nn.Module) -> None:
    w = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # squared norms 9, 1, 4
    # ascending 1, 4, 9: 1/14, 4/13, 9/9
    torch.testing.assert_close(_filter_scores(w, "lamp"),
                               torch.tensor([1.0, 1 / 14, 4 / 13], dtype=torch.float64))
    groups = prunable_groups(model)
    ratios = {g.name: 0.5 for g in groups if g.name == GROUP}
    assert kept_indices(groups, ratios, "lamp") == kept_indices(groups, ratios, "l2")


def test_taylor_search_in_worker_processes_sees_the_gradients(tmp_path) -> None:
    """Pickling drops .grad: the search ships the gradients to its workers, so two workers
    choose the same taylor channels (and write the same lines) as one process."""
    from sparsetrain.data import make_synthetic
    from sparsetrain.structured import abn_batches, eagleeye_search, eval_batches, holdout_split
    from sparsetrain.structured.search import read_candidates

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    rest, held = holdout_split(make_synthetic(160, seed=0), 40, seed=0)
    tb, hb = abn_batches(rest, mean, std, n=2, batch_size=32), eval_batches(held, mean, std, 40)
    lines = []
    for workers in (1, 2):
        torch.manual_seed(0)
        model = create_model("resnet20").eval()
        accumulate_gradients(model, tb)
        out = tmp_path / f"w{workers}"
        eagleeye_search(model, tb, hb, out, candidates=3, abn_batches=2, seed=1,
                        importance="taylor", progress=False, workers=workers)
        lines.append([{k: v for k, v in r.items() if k != "time_s"}
                      for r in read_candidates(out / "candidates.jsonl")])
    assert lines[0] == lines[1] and len(lines[0]) == 3
    model.zero_grad(set_to_none=True)  # without gradients the taylor search refuses to run
    with pytest.raises(UserError, match="gradients"):
        eagleeye_search(model, tb, hb, tmp_path / "nograd", candidates=1, abn_batches=2,
                        importance="taylor", progress=False, workers=1)
