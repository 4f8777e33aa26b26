"""The machine's limit: the dense-matmul rate torch reaches on this CPU.

    python -m benchmarks.peak

Times float32 ``a @ b`` at the DPO model's matrix shapes (a minibatch of 16 pairs, two
sequences of 9 tokens each: 288 rows) and at large square shapes; the best of 5 repeats
of enough calls to last ≈ 0.2 s. The peak is the best rate over all shapes. Writes
``_build/benchmarks/peak.csv``.
"""

from __future__ import annotations

import pandas as pd
import torch

from benchmarks.common import seconds, write

ROWS = 288  # 16 pairs × 2 sequences × 9 tokens
SHAPES = {
    "QKV projection (288×128 @ 128×384)": (ROWS, 128, 384),
    "MLP / output projection (288×128 @ 128×128)": (ROWS, 128, 128),
    "30 models batched: QKV (8640×128 @ 128×384)": (30 * ROWS, 128, 384),
    "256×128 @ 128×128": (256, 128, 128),
    "square 1024": (1024, 1024, 1024),
    "square 2048": (2048, 2048, 2048),
}


def rate(m: int, k: int, n: int, device: str | torch.device = "cpu") -> float:
    """Best GFLOP/s of (m×k) @ (k×n) in float32 over 5 repeats, on `device`."""
    device = torch.device(device)
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(calls: int) -> float:
        return seconds(lambda: ([a @ b for _ in range(calls)], sync()))

    calls = 1
    while run(calls) < 0.2:
        calls *= 2
    best = min(run(calls) for _ in range(5))
    return 2 * m * k * n * calls / best / 1e9


def main() -> pd.DataFrame:
    rows = [{"shape": name, "m": m, "k": k, "n": n, "gflops": rate(m, k, n)} for name, (m, k, n) in SHAPES.items()]
    df = pd.DataFrame(rows)
    df["fraction_of_peak"] = df["gflops"] / df["gflops"].max()
    write(df, "peak")
    return df


def peak_gflops(device: str | torch.device = "cpu") -> float:
    """The measured peak on `device` (best over SHAPES), as main() reports it for the CPU."""
    return max(rate(*shape, device=device) for shape in SHAPES.values())


if __name__ == "__main__":
    main()
