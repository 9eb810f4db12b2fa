"""Training step speed of bf16 autocast vs fp32 on this CPU (is bf16 native or emulated here?).

A ResNet-20 (channels_last) takes SGD steps on one fixed synthetic batch; for each precision
the best of steps 3..N is reported as images/s. No data loading, no evaluation: this isolates
the arithmetic that `train.precision` changes.

    python benchmarks/precision_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sparsetrain.models import create_model
from sparsetrain.precision import has_fast_bf16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    print(f"bf16 units: {has_fast_bf16(torch.device('cpu'))}; threads {args.threads}")
    for precision in ("fp32", "bf16"):
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        print(f"{precision}: {args.batch / min(times[2:]):.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
