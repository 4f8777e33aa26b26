"""Evaluation against the machine's limit: one evaluation of the 30-β ensemble, part by part.

    python -m benchmarks.eval_speed [--repeats 3] [--sft-epochs 2]

The KL sweep's evaluation at the paper profile (Park §4.2: S = [100, 500], W = 10, half the
pairs held out; 4 KL samples per test prompt, accuracy and margin on 1,024 test pairs), of
30 policies batched as one ensemble against one reference. The reference is an SFT model
(`sft_epochs` epochs of the KL sweep's SFT recipe), so that greedy answers and samples have
the lengths they have in a chapter; the policies are copies of it (speed does not depend on
their weights beyond the lengths they decode).

Each part (``Evaluator.__call__`` as a whole, and its greedy decoding, the test pairs'
log-probs and the KL estimate on their own) is timed `repeats` times (best kept) and its
FLOPs counted by torch's FlopCounterMode; the rate is compared with the peak matmul rate
measured just before and after (benchmarks.peak; the larger). Writes
``_build/benchmarks/eval_speed.csv``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import pandas as pd

from benchmarks.common import flops, seconds, write
from benchmarks.peak import peak_gflops
from benchmarks.sweep_speed import BETAS
from benchmarks.throughput import DATA
from dpo_toolkit.core.config import EvalConfig, ModelConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator, pair_logps
from dpo_toolkit.core.generate import greedy_answers
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.train import train_sft
from dpo_toolkit.recipes.sft_then_dpo import sft_recipe

EVAL = EvalConfig(kl_samples=4, max_pairs=1024)  # params/paper/kl_sweep.yaml and the chapter's margin_pairs


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timings of each part; the best is kept (≥ 1)")
    parser.add_argument("--sft-epochs", type=int, default=2, help="SFT epochs of the reference (≥ 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.sft_epochs < 1:
        parser.error(f"--repeats and --sft-epochs must be ≥ 1, got {args.repeats} and {args.sft_epochs}")
    train, test = make_pairs(DATA)
    reference = build_model(ModelConfig(), seed=0)
    sft = dataclasses.replace(sft_recipe("kl_sweep", args.sft_epochs), n_evals=1)
    train_sft(reference, train, sft, lambda model: {}, progress=False)
    reference.eval().requires_grad_(False)
    policies = Ensemble([copy.deepcopy(reference) for _ in BETAS])
    evaluator = Evaluator(test, DATA, EVAL, reference)
    parts = {
        "whole evaluation (Evaluator.__call__)": lambda: evaluator(policies, BETAS),
        "greedy answers (KV-cached decoding)": lambda: greedy_answers(policies, evaluator.prompts),
        "test pairs' log-probs (accuracy, margin)": lambda: pair_logps(policies, evaluator.test_batch),
        "KL: sampling and scoring": lambda: evaluator.kl(policies),
    }
    evaluator(policies, BETAS)  # warm-up
    peaks = [peak_gflops()]
    best = {name: min(seconds(run) for _ in range(args.repeats)) for name, run in parts.items()}
    peaks.append(peak_gflops())
    counted = {name: flops(run) for name, run in parts.items()}
    df = pd.DataFrame({"part": list(parts), "seconds": [best[n] for n in parts], "gflop": [counted[n] / 1e9 for n in parts]})
    df["gflops"] = df["gflop"] / df["seconds"]
    df["peak_gflops"] = max(peaks)
    df["fraction_of_peak"] = df["gflops"] / df["peak_gflops"]
    df["models"] = len(BETAS)
    df["test_prompts"] = len(evaluator.prompts)
    df["kl_samples"] = EVAL.kl_samples
    df["device"] = "cpu"
    write(df, "eval_speed")
    return df


if __name__ == "__main__":
    main()
