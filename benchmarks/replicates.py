"""Replicates as members: several seeds' runs as one batched ensemble against one ensemble per seed.

    python -m benchmarks.replicates [--seeds 3] [--steps 100] [--repeats 2]

On the KL sweep's task at Park's full size (S = [100, 500], W = 10, batch 16), the drifting
arm's shape (10 β, RMSprop 5e-4), `seeds` replicates, each with its own reference (a freshly
initialised model of its seed stands in for its SFT reference: speed does not depend on its
weights), timed in one run, the best of `repeats` (each method first run once to warm up):

- **DPO training, one ensemble per seed**: ``train_dpo_ensemble`` of a seed's 10 β against its
  reference for `steps` steps, one seed after another (the layout before replicates were members);
- **DPO training, replicates as members**: one ensemble of seeds × 10 members, each against its own
  seed's reference (``References``: each seed's stored and run once), as ``run_sft_then_dpo`` trains them;
- **evaluation**, the same two layouts: one call of the chapter's Evaluator (greedy answers, KL from
  4 samples per prompt, 1,024 margin pairs) on those policies (a chapter evaluates 30 times per run);
- **SFT training, one model per seed** and **replicates as members** (``train_sft``,
  ``train_sft_ensemble``), `steps` steps of §4.2's SFT recipe (Adam 1e-3).

Writes ``_build/benchmarks/replicates.csv``: seconds per phase and layout, and the speed-up of members.
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
from dpo_toolkit.core.ensemble import Ensemble, References
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


def layout(seeds: list[int]) -> tuple[list[DPOConfig], Ensemble, torch.nn.Module | References]:
    """Every (seed, β) of `seeds` as one ensemble: its configs, its policies (copies of their references)
    and the reference (a single seed's model, else ``References``)."""
    refs = references(seeds)
    grid = [(j, dataclasses.replace(DPO, beta=b, seed=s)) for j, s in enumerate(seeds) for b in BETAS]
    reference = refs[0] if len(seeds) == 1 else References(refs, [j for j, _ in grid])
    return [c for _, c in grid], Ensemble([refs[j] for j, _ in grid]), reference


def dpo_run(train: PairSet, seeds: list[int]) -> float:
    """Seconds of DPO training (no evaluation) of every (seed, β) of `seeds` as one ensemble."""
    cfgs, policies, reference = layout(seeds)
    return seconds(
        lambda: train_dpo_ensemble(policies, reference, train, cfgs, lambda p, betas: [{}] * len(cfgs), progress=False)
    )


def evaluation(test: PairSet, seeds: list[int]) -> float:
    """Seconds of one evaluation of every (seed, β) of `seeds` as one ensemble, against their references."""
    cfgs, policies, reference = layout(seeds)
    evaluator = Evaluator(test, DATA, EVAL, reference=reference)
    return seconds(lambda: evaluator(policies, betas=[c.beta for c in cfgs]))


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
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of every run (≥ 10)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each method; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.steps < 10 or args.repeats < 1:
        parser.error(f"need --seeds ≥ 2, --steps ≥ 10 and --repeats ≥ 1; got {args.seeds}, {args.steps} and {args.repeats}")
    train, test = make_pairs(DATA)
    train = subset(train, args.steps * DPO.batch_size)
    seeds = list(range(args.seeds))
    methods = {
        ("DPO training", "one ensemble per seed"): lambda: sum(dpo_run(train, [s]) for s in seeds),
        ("DPO training", "replicates as members"): lambda: dpo_run(train, seeds),
        ("evaluation", "one ensemble per seed"): lambda: sum(evaluation(test, [s]) for s in seeds),
        ("evaluation", "replicates as members"): lambda: evaluation(test, seeds),
        ("SFT training", "one model per seed"): lambda: sft_alone(train, seeds),
        ("SFT training", "replicates as members"): lambda: sft_members(train, seeds),
    }
    for run in methods.values():  # warm-up: a first call pays one-off costs
        run()
    best = {name: min(run() for _ in range(args.repeats)) for name, run in methods.items()}
    rows = [{"phase": phase, "layout": layout, "seconds": s} for (phase, layout), s in best.items()]
    df = pd.DataFrame(rows)
    df["speedup_of_members"] = df.groupby("phase")["seconds"].transform("first") / df["seconds"]
    df["seeds"], df["betas"], df["steps"] = args.seeds, len(BETAS), args.steps
    write(df, "replicates")
    return df


if __name__ == "__main__":
    main()
