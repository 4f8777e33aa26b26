"""How the batched sweep's cost grows with the work: the number of β, and the dataset.

    python -m benchmarks.scaling [--steps 50]

1. β: ``train_dpo_ensemble`` with M = 1, 2, 4 … 64 models for `steps` steps of batch 16.
2. Data: 30 β for one epoch over the KL sweep's pairs with S = [100, 100 + n], n = 50 … 400.
Writes ``_build/benchmarks/scaling.csv`` (one row per run: axis, size, seconds, pair-updates/s).
"""

from __future__ import annotations

import argparse

import pandas as pd

from benchmarks.common import write
from benchmarks.sweep_speed import BATCH, BETAS, batched
from benchmarks.throughput import pairs_subset
from dpo_toolkit.core.config import DataConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.studies.kl_sweep import beta_grid

MODELS = (1, 2, 4, 8, 16, 32, 64)
SPANS = (50, 100, 200, 400)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per run on the β axis (≥ 5)")
    args = parser.parse_args(argv)
    if args.steps < 5:
        parser.error(f"--steps must be ≥ 5, got {args.steps}")
    rows = []
    pairs = pairs_subset(args.steps * BATCH)
    batched(pairs_subset(10 * BATCH), BETAS[:2])  # warm-up: the first training call of a process pays one-off costs
    for m in MODELS:
        s = batched(pairs, beta_grid(m, 1e-2, 1.0) if m > 1 else [0.1])
        rows.append(
            {"axis": "models (β)", "size": m, "pairs": len(pairs), "seconds": s, "pair_updates_per_s": m * len(pairs) / s}
        )
    for span in SPANS:
        train, _ = make_pairs(DataConfig(prompt_min=100, prompt_max=100 + span, window=10, test_fraction=0.5))
        s = batched(train, BETAS)
        rows.append({"axis": "training pairs (30 β, one epoch)", "size": len(train), "pairs": len(train), "seconds": s,
                     "pair_updates_per_s": len(BETAS) * len(train) / s})  # fmt: skip
    df = pd.DataFrame(rows)
    write(df, "scaling")
    return df


if __name__ == "__main__":
    main()
