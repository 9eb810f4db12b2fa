"""Check N:M structure in trained checkpoints, independently of sparsetrain's own grouping code.

For every ``*_mask`` buffer of a checkpoint's model: each group of M consecutive input channels
(at every output channel and kernel position) has at most N active weights, and no weight is
nonzero outside its mask. Layers whose input dimension is not a multiple of M are listed (they
stay dense by design). Exit status 1 if any checkpoint breaks the pattern.

    python benchmarks/nm_check.py runs/cpu-s10/cpu_rigl_resnet20_cifar10_2of4/last.pt --nm 2:4
"""

from __future__ import annotations

import argparse
import sys

import torch


def check(path: str, n: int, m: int) -> bool:
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    masks = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith("_mask")}
    worst, groups, full, layers, ok = 0, 0, 0, 0, True
    for name, mask in masks.items():
        if bool(((sd[name] != 0) & ~mask.bool()).any()):
            print(f"  {name}: nonzero weights outside the mask")
            ok = False
        if mask.dim() < 2 or mask.shape[1] % m:
            print(f"  {name}: {tuple(mask.shape)}, input dim not a multiple of {m} "
                  f"(density {mask.float().mean():.3f})")
            continue
        g = (mask.movedim(1, -1) if mask.dim() > 2 else mask).reshape(-1, m).sum(1)
        worst, groups, layers = max(worst, int(g.max())), groups + g.numel(), layers + 1
        full += int((g == n).sum())
    active = sum(int(v.sum()) for v in masks.values())
    total = sum(v.numel() for v in masks.values())
    ok = ok and worst <= n
    print(f"{path}: {layers} layers, {groups} groups of {m}, at most {worst} active per group "
          f"({'ok' if ok else 'NOT'} {n}:{m}), {full / max(groups, 1):.4f} of groups with "
          f"exactly {n}; density over masked weights {active / max(total, 1):.4f}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--nm", default="2:4", help="N:M (default 2:4)")
    args = p.parse_args()
    try:
        n, m = (int(v) for v in args.nm.split(":"))
    except ValueError:
        p.error(f"--nm {args.nm!r} is not of the form N:M, e.g. 2:4")
    if not 0 < n < m:
        p.error(f"--nm {args.nm}: need 0 < N < M")
    results = [check(c, n, m) for c in args.checkpoints]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
