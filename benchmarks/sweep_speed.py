"""Speed of the KL sweep: the batched ensemble against a plain per-β loop, on the paper's data.

    python benchmarks/sweep_speed.py [--betas-subset 3] [--seed 0]

Times, in one run and on the same SFT reference:
  1. the plain loop (``train_dpo``, one β after another) on a subset of β, scaled up to 30 β;
  2. the batched ensemble (``train_dpo_ensemble``) on all 30 β;
both over the paper's 3 DPO epochs with a single evaluation, so the ratio compares training.
  3. the full paper-scale sweep of one seed, 30 evaluations included (``run_sft_then_dpo``).
Each phase runs in its own process, so its peak resident memory is its own. Prints a table
and writes ``_build/benchmarks/sweep_speed.csv``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from dpo_toolkit.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.data import make_pairs
from dpo_toolkit.ensemble import Ensemble
from dpo_toolkit.runs import run_sft_then_dpo, sft_reference
from dpo_toolkit.sweep import beta_grid
from dpo_toolkit.train import train_dpo, train_dpo_ensemble

DATA = DataConfig(prompt_min=100, prompt_max=500, window=10, test_fraction=0.5)
SFT = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=10, batch_size=16, grad_clip=None, n_evals=1)
DPO = DPOConfig(optimizer="rmsprop", lr=5e-5, weight_decay=0.0, epochs=3, batch_size=16, grad_clip=None, n_evals=1)
EVAL = EvalConfig(kl_samples=4, max_pairs=1024)
BETAS = beta_grid(30, 1e-2, 1.0)
ROOT = Path(__file__).resolve().parents[1]


def _reference(seed: int, cache: Path):
    return sft_reference(DATA, ModelConfig(), SFT, EVAL, seed, cache, progress=False)[0]


def plain_loop(seed: int, cache: Path, subset: int) -> dict:
    reference = _reference(seed, cache)
    train, _ = make_pairs(DATA)
    betas = BETAS[:: len(BETAS) // subset][:subset]
    start = time.perf_counter()
    for beta in betas:
        policy = copy.deepcopy(reference).requires_grad_(True)
        train_dpo(policy, reference, train, dataclasses.replace(DPO, beta=beta), lambda p: {}, progress=False)
    seconds = time.perf_counter() - start
    return {"phase": f"plain loop, {subset} β scaled to {len(BETAS)}", "seconds": seconds * len(BETAS) / subset}


def batched(seed: int, cache: Path, subset: int) -> dict:
    reference = _reference(seed, cache)
    train, _ = make_pairs(DATA)
    cfgs = [dataclasses.replace(DPO, beta=b) for b in BETAS]
    start = time.perf_counter()
    train_dpo_ensemble(
        Ensemble([copy.deepcopy(reference) for _ in BETAS]), reference, train, cfgs, lambda e: [{}] * len(cfgs), progress=False
    )
    return {"phase": f"batched ensemble, {len(BETAS)} β", "seconds": time.perf_counter() - start}


def full_sweep(seed: int, cache: Path, subset: int) -> dict:
    _reference(seed, cache)  # SFT is not part of the sweep's time
    dpo = dataclasses.replace(DPO, n_evals=30)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for f in cache.glob("sft-*"):
            (Path(tmp) / f.name).symlink_to(f)
        run_sft_then_dpo(DATA, ModelConfig(), SFT, dpo, EVAL, BETAS, [seed], tmp, progress=False)
    return {
        "phase": f"full sweep, {len(BETAS)} β × 30 evaluations (KL {EVAL.kl_samples} samples/prompt)",
        "seconds": time.perf_counter() - start,
    }


def _child(fn, args, queue) -> None:
    row = fn(*args)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas-subset", type=int, default=3, help="β run by the plain loop (1–30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.betas_subset <= len(BETAS):
        parser.error(f"--betas-subset must be in [1, {len(BETAS)}], got {args.betas_subset}")
    cache = ROOT / "_build" / "benchmarks" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    _reference(args.seed, cache)
    ctx = mp.get_context("spawn")
    rows = []
    for fn in (plain_loop, batched, full_sweep):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(fn, (args.seed, cache, args.betas_subset), queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    df = pd.DataFrame(rows)
    df["speedup_vs_plain"] = df["seconds"].iloc[0] / df["seconds"]
    df.loc[2, "speedup_vs_plain"] = float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    out = ROOT / "_build" / "benchmarks" / "sweep_speed.csv"
    df.to_csv(out, index=False)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
