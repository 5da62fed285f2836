"""Time attendo's CPU dropout against nn.Dropout (forward + backward) on a Transformer-sized
activation. Prints one JSON object.

    OMP_NUM_THREADS=2 python bench/dropout_speed.py
"""

from __future__ import annotations

import json
import time

import torch

from attendo.model.dropout import Dropout


def _time(module: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    module.train()
    for _ in range(5):
        module(x).sum().backward()
    t = time.perf_counter()
    for _ in range(reps):
        module(x).sum().backward()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    torch.manual_seed(0)
    out = {"bench": "dropout_speed", "shape": [64, 16, 512], "p": 0.1,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(64, 16, 512, dtype=dtype, requires_grad=True)
        ref = _time(torch.nn.Dropout(0.1), x, 100)
        ours = _time(Dropout(0.1), x, 100)
        name = str(dtype).removeprefix("torch.")
        out[name] = {"nn_dropout_ms": round(ref, 3), "attendo_ms": round(ours, 3),
                     "speedup": round(ref / ours, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
