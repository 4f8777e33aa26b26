"""The 30-β sweep, the real workload, in pair-updates per second (pairs × models).

    python -m benchmarks.sweep_speed [--steps 100] [--subset 2]

On the KL sweep's data (Park §4.2), batch 16, RMSprop 5e-5, one SFT reference, `steps`
optimizer steps of every model, in one run, each method timed `repeats` times (best kept):

- **batched**: ``train_dpo_ensemble``, all 30 β as one ensemble (after a short warm-up run);
- **plain loop**: ``train_dpo``, one β after another, timed on `subset` β and scaled to 30;
- **TRL**: DPOTrainer on the GPT-2 of the same shape (see benchmarks.throughput), one β
  after another, timed on `subset` β and scaled (skipped when TRL is not installed).

Then the machine's limit: torch's FlopCounterMode counts the FLOPs of one batched
training step (forward and backward of every model on chosen and rejected, prompt not
shared; reference log-probs cached, so not counted), and the achieved rate is compared
with the peak matmul rate measured just before and after the timings (benchmarks.peak;
the larger of the two, since this machine's rate drifts by tens of percent over minutes).
Writes ``_build/benchmarks/sweep_speed.csv``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import tempfile

import pandas as pd
import torch

from benchmarks.common import flops, seconds, write
from benchmarks.peak import peak_gflops
from benchmarks.throughput import BATCH, LR, pairs_subset, run_trl
from dpo_toolkit.core.config import DPOConfig, ModelConfig
from dpo_toolkit.core.data import PairSet
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.dpo_train import dpo_batch_loss, train_dpo, train_dpo_ensemble
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.kl_sweep import beta_grid

BETAS = beta_grid(30, 1e-2, 1.0)
DPO = DPOConfig(optimizer="rmsprop", lr=LR, weight_decay=0.0, epochs=1, batch_size=BATCH, grad_clip=None, n_evals=1)


DEVICE = torch.device("cpu")  # set by --device


def reference_model() -> torch.nn.Module:
    """A fixed model standing in for the SFT reference (speed does not depend on its weights), on DEVICE."""
    return build_model(ModelConfig(), seed=0).requires_grad_(False).to(DEVICE)


def batched(pairs: PairSet, betas: list[float]) -> float:
    reference = reference_model()
    cfgs = [dataclasses.replace(DPO, beta=b) for b in betas]
    policies = Ensemble([copy.deepcopy(reference) for _ in betas])
    return seconds(lambda: train_dpo_ensemble(policies, reference, pairs, cfgs, lambda e, betas: [{}] * len(e), progress=False))


def plain_loop(pairs: PairSet, betas: list[float]) -> float:
    reference = reference_model()

    def run() -> None:
        for beta in betas:
            policy = copy.deepcopy(reference).requires_grad_(True)
            train_dpo(policy, reference, pairs, dataclasses.replace(DPO, beta=beta), lambda p, betas: {}, progress=False)

    return seconds(run)


def trl_loop(pairs: PairSet, betas: list[float]) -> float:
    import benchmarks.throughput as throughput

    def run() -> None:
        for beta in betas:
            throughput.BETA = beta
            with tempfile.TemporaryDirectory() as workdir:
                run_trl(pairs, workdir)

    return seconds(run)


def step_flops(pairs: PairSet, n_models: int) -> float:
    """FLOPs of one batched training step (loss, backward) of n_models on one minibatch."""
    reference = reference_model()
    policies = Ensemble([copy.deepcopy(reference) for _ in range(n_models)])
    loss = dpo_batch_loss(policies, pairs, reference, torch.full((n_models, 1), 0.1))
    index = torch.arange(BATCH)
    return flops(lambda: loss(index).sum().backward())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of every model (≥ 10)")
    parser.add_argument("--subset", type=int, default=2, help="β timed one after another, then scaled to 30 (1–30)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (TRL runs only on the CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each method; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    global DEVICE
    try:
        DEVICE = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.steps < 10 or not 1 <= args.subset <= len(BETAS) or args.repeats < 1:
        parser.error(f"--steps must be ≥ 10, --subset in [1, {len(BETAS)}] and --repeats ≥ 1, "
                     f"got {args.steps}, {args.subset} and {args.repeats}")  # fmt: skip
    pairs = pairs_subset(args.steps * BATCH)
    subset = BETAS[:: len(BETAS) // args.subset][: args.subset]
    scale = len(BETAS) / len(subset)
    updates = len(pairs) * len(BETAS)  # pair-updates of the whole sweep
    batched(pairs_subset(10 * BATCH), BETAS[:2])  # warm-up: the first training call of a process pays one-off costs
    methods = {
        "batched ensemble (train_dpo_ensemble)": (len(BETAS), lambda: batched(pairs, BETAS)),
        "plain per-β loop (train_dpo)": (len(subset), lambda: plain_loop(pairs, subset) * scale),
    }
    if importlib.util.find_spec("trl") is not None and DEVICE.type == "cpu":
        methods["TRL DPOTrainer per β"] = (len(subset), lambda: trl_loop(pairs, subset) * scale)
    peaks = [peak_gflops(DEVICE)]  # the machine's rate drifts over minutes: take the peak around the batched timing
    best = {name: min(run() for _ in range(args.repeats)) for name, (_, run) in methods.items()}
    peaks.append(peak_gflops(DEVICE))
    rows = [{"method": name, "betas_timed": n, "seconds_30_betas": best[name]} for name, (n, _) in methods.items()]
    df = pd.DataFrame(rows)
    df["pair_updates_per_s"] = updates / df["seconds_30_betas"]
    batched_rate = df["pair_updates_per_s"].iloc[0]
    df["batched_speedup"] = batched_rate / df["pair_updates_per_s"]
    per_update = step_flops(pairs, len(BETAS)) / (len(BETAS) * BATCH)
    peak = max(peaks)
    df["mflop_per_pair_update"] = per_update / 1e6
    df["gflops"] = df["pair_updates_per_s"] * per_update / 1e9
    df["peak_gflops"] = peak
    df["fraction_of_peak"] = df["gflops"] / peak
    df["steps"] = args.steps
    df["device"] = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    write(df, "sweep_speed" if DEVICE.type == "cpu" else "sweep_speed_gpu")
    return df


if __name__ == "__main__":
    main()
