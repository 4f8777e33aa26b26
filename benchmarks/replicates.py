"""Replicates as members: several seeds' runs as one batched ensemble against one ensemble per seed.

    python -m benchmarks.replicates [--seeds 3] [--steps 60] [--evals 2] [--repeats 2]

On the KL sweep's task at Park's full size (S = [100, 500], W = 10, batch 16), the drifting
arm's shape (10 β, RMSprop 5e-4), `seeds` replicates, each with its own reference (a freshly
initialised model of its seed stands in for its SFT reference: speed does not depend on its
weights), timed in one run, the best of `repeats` (each method first run once to warm up):

- **DPO, one ensemble per seed**: ``train_dpo_ensemble`` of a seed's 10 β against its reference,
  one seed after another (the layout before replicates were members);
- **DPO, replicates as members**: one ensemble of seeds × 10 members, each against its own
  seed's reference (an Ensemble of references), as ``run_sft_then_dpo`` now trains them;
- **SFT, one model per seed** and **SFT, replicates as members** (``train_sft``, ``train_sft_ensemble``),
  `steps` steps of §4.2's SFT recipe (Adam 1e-3).

DPO is evaluated `evals` times along the run by the chapter's Evaluator (greedy answers, KL
from 4 samples per prompt, 1,024 margin pairs), so the ratio covers evaluation too.
Writes ``_build/benchmarks/replicates.csv``: seconds per method and the speed-up of members.
"""

from __future__ import annotations

import argparse
import dataclasses

import pandas as pd
import torch

from benchmarks.common import seconds, write
from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import PairSet, make_pairs
from dpo_toolkit.core.dpo_train import train_dpo_ensemble
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.train import train_sft, train_sft_ensemble
from dpo_toolkit.studies.kl_sweep import beta_grid

DATA = DataConfig(prompt_min=100, prompt_max=500, window=10, test_fraction=0.5)
BETAS = beta_grid(10, 1e-2, 1.0)  # the drifting arm's β (drift_n_betas at the paper profile)
DPO = DPOConfig(optimizer="rmsprop", lr=5e-4, weight_decay=0.0, epochs=1, batch_size=16, grad_clip=None)
SFT = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=16, grad_clip=None, n_evals=1)
EVAL = EvalConfig(kl_samples=4, max_pairs=1024)


def subset(pairs: PairSet, n: int) -> PairSet:
    return PairSet(pairs.prompt[:n], pairs.chosen[:n], pairs.rejected[:n])


def references(seeds: list[int]) -> list[torch.nn.Module]:
    return [build_model(ModelConfig(), seed).requires_grad_(False) for seed in seeds]


def dpo_run(train: PairSet, test: PairSet, seeds: list[int], evals: int) -> float:
    """Seconds of DPO of every (seed, β) of `seeds` as one ensemble (a single seed: against its one reference)."""
    refs = references(seeds)
    grid = [(j, dataclasses.replace(DPO, beta=b, seed=s, n_evals=evals)) for j, s in enumerate(seeds) for b in BETAS]
    reference = refs[0] if len(seeds) == 1 else Ensemble([refs[j] for j, _ in grid])
    evaluator = Evaluator(test, DATA, EVAL, reference=reference)
    policies = Ensemble([refs[j] for j, _ in grid])
    return seconds(lambda: train_dpo_ensemble(policies, reference, train, [c for _, c in grid], evaluator, progress=False))


def sft_alone(train: PairSet, seeds: list[int]) -> float:
    def run() -> None:
        for seed in seeds:
            train_sft(build_model(ModelConfig(), seed), train, dataclasses.replace(SFT, seed=seed), lambda m: {}, progress=False)

    return seconds(run)


def sft_members(train: PairSet, seeds: list[int]) -> float:
    policies = Ensemble([build_model(ModelConfig(), seed) for seed in seeds])
    cfgs = [dataclasses.replace(SFT, seed=seed) for seed in seeds]
    return seconds(lambda: train_sft_ensemble(policies, train, cfgs, lambda p: [{}] * len(cfgs), progress=False))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="replicates (≥ 2)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of every run (≥ 10)")
    parser.add_argument("--evals", type=int, default=2, help="DPO evaluations along each run (≥ 1)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each method; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.steps < 10 or args.evals < 1 or args.repeats < 1:
        parser.error(f"need --seeds ≥ 2, --steps ≥ 10, --evals ≥ 1, --repeats ≥ 1; got {args.seeds}, {args.steps}, "
                     f"{args.evals}, {args.repeats}")  # fmt: skip
    train, test = make_pairs(DATA)
    train = subset(train, args.steps * DPO.batch_size)
    seeds = list(range(args.seeds))
    methods = {
        ("DPO", "one ensemble per seed"): lambda: sum(dpo_run(train, test, [s], args.evals) for s in seeds),
        ("DPO", "replicates as members"): lambda: dpo_run(train, test, seeds, args.evals),
        ("SFT", "one model per seed"): lambda: sft_alone(train, seeds),
        ("SFT", "replicates as members"): lambda: sft_members(train, seeds),
    }
    for run in methods.values():  # warm-up: a first call pays one-off costs
        run()
    best = {name: min(run() for _ in range(args.repeats)) for name, run in methods.items()}
    rows = [{"phase": phase, "layout": layout, "seconds": s} for (phase, layout), s in best.items()]
    df = pd.DataFrame(rows)
    df["speedup_of_members"] = df.groupby("phase")["seconds"].transform("first") / df["seconds"]
    df["seeds"], df["betas"], df["steps"], df["evals"] = args.seeds, len(BETAS), args.steps, args.evals
    write(df, "replicates")
    return df


if __name__ == "__main__":
    main()
