"""Saliency scores for pruning and regrowth: random, magnitude, SNIP, GraSP, SynFlow, gradient.

Every score has one signature::

    score_fn(model: nn.Module, names: Sequence[str],
             batches: Iterable[tuple[Tensor, Tensor]] | None, *,
             generator: torch.Generator, density: float = 1.0) -> dict[str, Tensor]

``names`` are entries of ``model.named_parameters()`` (the masked weights); the result maps each
name to a detached fp32 tensor of the parameter's shape on the parameter's device; higher =
keep. ``batches`` are ``(inputs, integer labels)``; data scores use the cross-entropy loss summed
over the batches (each batch averaged), with the model in train mode (batch statistics), as at
initialization in the papers. ``density`` is the final global density (only SynFlow uses it).
Some scores take extra keyword options (``synflow(rounds=)``, ``grasp(temperature=, ...)``).

Under data parallelism (``torchrun``) the accumulated gradients are averaged across ranks
before they become scores, so every rank computes the same scores (and masks) from the global
batch. No score changes the model: parameters, buffers (BN running statistics), ``.grad`` fields,
``requires_grad`` flags and every module's train/eval mode are as before the call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsetrain.distributed import mean_across_ranks
from sparsetrain.errors import UserError
from sparsetrain.sparsity.topk import _check_density, densities_of, global_masks

__all__ = [
    "SCORES", "class_balanced_batch", "get_score", "gradient", "grasp", "list_scores",
    "magnitude", "random", "ratio_densities", "snip", "synflow",
]

Batches = Iterable[tuple[Tensor, Tensor]]
ScoreFn = Callable[..., dict[str, Tensor]]


# --------------------------------------------------------------------------- helpers


def _params(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    if isinstance(names, str) or not names:
        raise UserError(f"names must be a non-empty sequence of parameter names, got {names!r}")
    if len(set(names)) != len(names):
        raise UserError(f"parameter names must be unique, got {list(names)!r}")
    table = dict(model.named_parameters())
    missing = [n for n in names if n not in table]
    if missing:
        raise UserError(f"unknown parameter name(s) {missing!r} for {type(model).__name__}")
    return [table[n] for n in names]


def _result(
    names: Sequence[str], params: Sequence[Tensor], values: Sequence[Tensor]
) -> dict[str, Tensor]:
    return {
        n: v.detach().to(device=p.device, dtype=torch.float32).reshape(p.shape)
        for n, p, v in zip(names, params, values, strict=True)
    }


def _cuda_indices(model: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})


@contextmanager
def _untouched(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Run in train mode with grads enabled for ``params``; restore modes, buffers, flags.

    The torch RNG is forked so that dropout draws do not advance the caller's RNG state.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = [(p, p.requires_grad) for p in params]
    try:
        model.train()
        for p in params:
            p.requires_grad_(True)
        with torch.random.fork_rng(devices=_cuda_indices(model)), torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, flag in flags:
            p.requires_grad_(flag)


def _data(batches: Batches | None, what: str, device: torch.device) -> Iterator[tuple]:
    if batches is None:
        raise UserError(f"the {what} score needs data batches, got None")
    count = 0
    for x, y in batches:
        count += 1
        yield x.to(device), y.to(device)
    if count == 0:
        raise UserError(f"the {what} score needs at least one data batch, got none")


def _grad(out: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    grads = torch.autograd.grad(out, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _loss_grad(
    model: nn.Module, params: Sequence[nn.Parameter], batches: Batches | None, what: str,
    temperature: float = 1.0,
) -> list[Tensor]:
    """Sum over batches of d CE(model(x) / T, y) / d params (batch-mean cross-entropy)."""
    total = [torch.zeros_like(p) for p in params]
    with _untouched(model, params):
        for x, y in _data(batches, what, params[0].device):
            loss = F.cross_entropy(model(x) / temperature, y)
            for t, g in zip(total, _grad(loss, params), strict=True):
                t.add_(g)
    mean_across_ranks(total)  # data parallel: every rank scores the global batch
    return total


# --------------------------------------------------------------------------- scores


def random(
    model: nn.Module, names: Sequence[str], batches: Batches | None = None, *,
    generator: torch.Generator, density: float = 1.0,
) -> dict[str, Tensor]:
    """I.i.d. U[0, 1) from ``generator``: per-layer top-k is a uniformly random exact-size mask."""
    params = _params(model, names)
    draws = [torch.rand(p.shape, generator=generator, device=generator.device) for p in params]
    return _result(names, params, draws)


def magnitude(
    model: nn.Module, names: Sequence[str], batches: Batches | None = None, *,
    generator: torch.Generator, density: float = 1.0,
) -> dict[str, Tensor]:
    """|w| (magnitude pruning; Han et al. 2015, Zhu & Gupta 2017)."""
    params = _params(model, names)
    return _result(names, params, [p.detach().abs() for p in params])


def gradient(
    model: nn.Module, names: Sequence[str], batches: Batches | None, *,
    generator: torch.Generator, density: float = 1.0,
) -> dict[str, Tensor]:
    """|dL/dw| of the given batches over all positions (RigL / GraNet regrowth; Evci 2020)."""
    params = _params(model, names)
    grads = _loss_grad(model, params, batches, "gradient")
    return _result(names, params, [g.abs() for g in grads])


def snip(
    model: nn.Module, names: Sequence[str], batches: Batches | None, *,
    generator: torch.Generator, density: float = 1.0,
) -> dict[str, Tensor]:
    """SNIP connection sensitivity |g * w| (Lee et al., ICLR 2019, Eq. 6 up to normalization)."""
    params = _params(model, names)
    grads = _loss_grad(model, params, batches, "snip")
    values = [(g * p.detach()).abs() for g, p in zip(grads, params, strict=True)]
    return _result(names, params, values)


def class_balanced_batch(
    batches: Batches, num_classes: int, per_class: int = 10
) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` samples of each class in stream order, concatenated class by
    class (class 0's samples first), as GraSP's ``GraSP_fetch_data`` returns them; the order
    matters because GraSP splits this batch into two halves.

    Stops reading as soon as every class is full; classes with fewer samples give what they have.
    """
    if num_classes < 1 or per_class < 1:
        raise UserError(f"num_classes and per_class must be >= 1, got {num_classes}, {per_class}")
    xs: list[list[Tensor]] = [[] for _ in range(num_classes)]
    for x, y in batches:
        for i, label in enumerate(y.tolist()):
            if 0 <= label < num_classes and len(xs[label]) < per_class:
                xs[label].append(x[i])
        if min(len(c) for c in xs) >= per_class:
            break
    labels = [torch.full((len(c),), k, dtype=torch.long) for k, c in enumerate(xs)]
    if not any(xs):
        raise UserError("class_balanced_batch: the batches hold no sample with a valid label")
    x = torch.stack([s for c in xs for s in c])
    return x, torch.cat(labels).to(x.device)


def _halves(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    """GraSP's two halves ``[:N//2]`` and ``[N//2:]`` (each a forward with its own BN
    statistics); a batch of one sample stays whole."""
    n = x.shape[0] // 2
    return [(x, y)] if n == 0 else [(x[:n], y[:n]), (x[n:], y[n:])]


@torch.no_grad()
def _xavier_copy(model: nn.Module, types: tuple[type[nn.Module], ...],
                 generator: torch.Generator) -> nn.Module:
    """A deep copy whose ``types`` layers get Xavier-normal weights drawn from ``generator`` in
    module order (the official SNIP/GraSP re-draw their scoring copy this way)."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, types):
            w = torch.empty(m.weight.shape, dtype=torch.float32)
            nn.init.xavier_normal_(w, generator=generator)
            m.weight.copy_(w)
    return net


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("cannot infer the number of classes (no nn.Linear); pass num_classes=")
    return linears[-1].out_features


def grasp(
    model: nn.Module, names: Sequence[str], batches: Batches | None, *,
    generator: torch.Generator, density: float = 1.0, temperature: float = 200.0,
    num_classes: int | None = None, per_class: int | None = 10, halves: bool = True,
    reinit_classifier: bool = True,
) -> dict[str, Tensor]:
    """GraSP keep-score w * (H g) (Wang et al., ICLR 2020, Eq. 8 with the sign flipped).

    The paper removes the largest -w * Hg, so we keep the largest w * Hg. ``g`` is the gradient of
    the loss on logits / ``temperature``; ``H g`` a Hessian-vector product by double backprop.
    With ``per_class`` set, the data is one class-balanced batch (``num_classes`` inferred from
    the last nn.Linear when not given); ``per_class=None`` uses the batches as given.
    As the official code: the class-ordered batch is split into two halves (``halves``), each a
    separate forward with its own BN statistics, g and Hg summed over them; and the scoring copy's
    nn.Linear weights are re-drawn Xavier-normal from ``generator`` (``reinit_classifier``), so the
    classifier's scores use the re-drawn weights. The model itself is never changed.
    """
    params = _params(model, names)
    if batches is None:
        raise UserError("the grasp score needs data batches, got None")
    if per_class is not None:
        n_cls = _num_classes(model) if num_classes is None else num_classes
        x, y = class_balanced_batch(batches, n_cls, per_class)
        batches = _halves(x, y) if halves else [(x, y)]
    else:
        batches = list(batches)
    net = _xavier_copy(model, (nn.Linear,), generator) if reinit_classifier else model
    weights = _params(net, names)
    g = _loss_grad(net, weights, batches, "grasp", temperature)  # stopped: a constant vector
    hg = [torch.zeros_like(p) for p in weights]
    with _untouched(net, weights):
        for xb, yb in _data(batches, "grasp", weights[0].device):
            loss = F.cross_entropy(net(xb) / temperature, yb)
            dl = _grad(loss, weights, create_graph=True)
            z = sum((gi * di).sum() for gi, di in zip(g, dl, strict=True))
            for acc, h in zip(hg, _grad(z, weights), strict=True):
                acc.add_(h)
    mean_across_ranks(hg)
    return _result(names, params, [w.detach() * h for w, h in zip(weights, hg, strict=True)])


def _linearized(model: nn.Module, names: Sequence[str]) -> tuple[nn.Module, list[Tensor]]:
    """Float64 copy with |theta| for every parameter and eval-mode BN; grads only for names."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_().requires_grad_(False)
    table = dict(net.named_parameters())
    return net, [table[n].requires_grad_(True) for n in names]


def synflow(
    model: nn.Module, names: Sequence[str], batches: Batches | None = None, *,
    generator: torch.Generator, density: float = 1.0, rounds: int = 100,
    input_size: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Iterative SynFlow |w * dR/dw| (Tanaka et al., NeurIPS 2020, Algorithm 1); data-free.

    On a float64 copy with |theta| for every parameter and BN in eval mode (an affine map), R is
    the sum of the outputs for an all-ones input of ``[1, *input_size]`` (default
    ``model.input_size``). Round k = 1..rounds keeps the global top-k at D^(k/rounds) of the
    currently masked network. Returns the last round's scores with pruned entries at -inf, so
    ``global_masks(scores, density)`` reproduces the final mask exactly.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"synflow rounds must be a positive integer, got {rounds!r}")
    density = _check_density(density, "synflow density", allow_zero=False)
    params = _params(model, names)
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise UserError("synflow needs the model's input size: set model.input_size or pass it")
    net, weights = _linearized(model, names)
    x = torch.ones(1, *size, dtype=torch.float64, device=params[0].device)
    keep = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    for k in range(1, rounds + 1):
        with torch.enable_grad():
            grads = _grad(net(x).sum(), weights)
        mean_across_ranks(grads)  # same data on every rank; removes any device nondeterminism
        scores = [(w.detach() * g).abs() for w, g in zip(weights, grads, strict=True)]
        ranked = {n: scores[i].masked_fill(~keep[i], -math.inf) for i, n in enumerate(names)}
        # -inf on pruned entries keeps the masks nested: a pruned weight is never revived.
        masks = global_masks(ranked, density if k == rounds else density ** (k / rounds))
        with torch.no_grad():
            for w, m in zip(weights, masks.values(), strict=True):
                w.mul_(m)
        keep = [m.bool() for m in masks.values()]
    # Kept entries are >= 0 or +inf (NaN -> 0), so exactly the kept ones beat the -inf ones.
    final = [s.nan_to_num(nan=0.0, posinf=math.inf).masked_fill(~m, -math.inf)
             for s, m in zip(scores, keep, strict=True)]
    return _result(names, params, final)


SCORES: dict[str, ScoreFn] = {
    "random": random,
    "magnitude": magnitude,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
    "gradient": gradient,
}


def list_scores() -> list[str]:
    """Sorted names of the registered scores."""
    return sorted(SCORES)


def get_score(name: str) -> ScoreFn:
    """The score function registered as ``name``; raises :class:`UserError` naming valid ones."""
    fn = SCORES.get(name)
    if fn is None:
        raise UserError(f"unknown score {name!r}; valid scores: {', '.join(list_scores())}")
    return fn


def ratio_densities(
    kind: str, model: nn.Module, names: Sequence[str], batches: Batches | None, *,
    density: float, generator: torch.Generator,
) -> dict[str, float]:
    """Per-layer densities of SNIP-ratio / GraSP-ratio (Liu et al., ICLR 2022, Sec. 4).

    As the official Random_Pruning code: SNIP-ratio scores a copy whose Conv2d/Linear weights are
    re-drawn Xavier-normal (from ``generator``); GraSP-ratio scores the model as it is (its GraSP
    has no re-draw) with 25 samples per class in two class-split halves, temperature 200. One
    global top-k at ``density``; returns each layer's kept fraction (the caller then draws random
    masks with these densities). The caller's global RNG state and the model are untouched.
    """
    if kind not in ("snip", "grasp"):
        raise UserError(f"unknown ratio kind {kind!r}; valid kinds: grasp, snip")
    density = _check_density(density, f"{kind}_ratio density", allow_zero=False)
    _params(model, names)
    if kind == "snip":
        net = _xavier_copy(model, (nn.Conv2d, nn.Linear), generator)
        scores = snip(net, names, batches, generator=generator, density=density)
    else:
        scores = grasp(model, names, batches, generator=generator, density=density,
                       per_class=25, reinit_classifier=False)
    return densities_of(global_masks(scores, density))
