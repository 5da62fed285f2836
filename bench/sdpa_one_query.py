"""One query per row (incremental decoding): fused scaled_dot_product_attention against the
three plain operations (scores, softmax, weighted sum), at beam-search sizes.

    OMP_NUM_THREADS=2 python bench/sdpa_one_query.py

Prints one JSON object: microseconds per call for each number of keys. attendo's attention
takes the plain path for one query per row on CPU (attendo/model/transformer.py).
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F


def per_call_us(fn, n: int = 200) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t) / n * 1e6, 1)


def main() -> None:
    torch.set_num_threads(2)
    rows, heads, d = 320, 4, 64  # 64 sentences x beam 5, d_model 256
    out = {"rows": rows, "heads": heads, "d_head": d, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "us_per_call": {}}
    for keys in (4, 8, 12, 20, 40):
        q = torch.randn(rows, heads, 1, d)
        k, v = torch.randn(rows, heads, keys, d), torch.randn(rows, heads, keys, d)
        allowed = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
        allowed[::2, :, :, -1] = False  # some padding

        def fused(q=q, k=k, v=v, allowed=allowed):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

        def plain(q=q, k=k, v=v, allowed=allowed):
            s = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
            return torch.softmax(s, dim=-1) @ v

        with torch.inference_mode():
            torch.testing.assert_close(fused(), plain(), atol=1e-5, rtol=1e-4)
            out["us_per_call"][keys] = {"fused": per_call_us(fused), "plain": per_call_us(plain)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
