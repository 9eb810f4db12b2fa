"""One rank of a data-parallel test run (started by tests/test_distributed.py).

    python tests/_dist_worker.py CONFIG OUT_JSON [--corrupt-step N] [--resume] [KEY=VALUE ...]

Trains CONFIG with ``sparsetrain.train`` (ranks come from RANK/WORLD_SIZE in the environment)
and writes, per optimizer step, a digest of the masks and of all weights to OUT_JSON (and rank 0
saves the weights after the first step beside it, as ``*.step1.pt``).
``--corrupt-step N`` flips one kept weight of rank 1's first mask after step N, to show that
``train.check_consistency`` stops the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import torch

from sparsetrain import load_config, train
from sparsetrain.callbacks import Callback
from sparsetrain.distributed import mask_digest


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not name.endswith("_mask"):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Recorder(Callback):
    name = "recorder"

    def __init__(self, corrupt_step: int | None, step1: str) -> None:
        self.rows: list[dict] = []
        self.corrupt_step = corrupt_step
        self.step1 = step1

    def after_optimizer_step(self, trainer) -> None:
        method = trainer.callbacks[0]
        if trainer.step == self.corrupt_step and os.environ.get("RANK") == "1":
            mask = next(iter(method.masks.masks.values()))
            mask[tuple(mask.nonzero()[0])] = 0.0
        if trainer.step == 1 and os.environ.get("RANK", "0") == "0":
            torch.save(trainer.model.state_dict(), self.step1)
        self.rows.append({"step": trainer.step, "masks": mask_digest(method.masks.masks),
                          "weights": weights_digest(trainer.model),
                          "updates": len(method.log)})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("out")
    p.add_argument("--corrupt-step", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()
    rec = Recorder(args.corrupt_step, args.out.replace(".json", ".step1.pt"))
    summary = train(load_config(args.config, args.overrides), callbacks=[rec],
                    resume=args.resume)
    with open(args.out, "w") as f:
        json.dump({"rows": rec.rows, "summary": {k: summary[k] for k in
                                                 ("final", "steps", "world_size", "density")}}, f)


if __name__ == "__main__":
    main()
