"""Claims C1–C3 of the grokking chapter (Park §4.1, Fig. 1), decided by code.

All curves are first averaged over seeds. Thresholds are fixed here, before any
result is seen, from the paper's words ("nearly no OOD", "about 80 %", "never
comes back", "near-monotonic").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from dpo_toolkit.core import parameters as p
from dpo_toolkit.core.claims import claims_frame, verdict
from dpo_toolkit.core.config import OPTIMIZERS, ModelConfig
from dpo_toolkit.core.data import make_pairs

# The notebook's `parameters` cell, one spec per variable (notebooks/grokking.md).
PARAMETERS = {
    "betas": dataclasses.replace(p.BETAS, scalar_ok=True),  # a single β also works
    "seeds": p.SEEDS,
    **p.NUMBER_LINE,
    "sft_epochs": p.EPOCHS,
    "dpo_epochs": p.EPOCHS,
    "optimizer": p.choice(*OPTIMIZERS),
    "lr": p.LEARNING_RATE,
    "weight_decay": p.real(0),
    "batch_size": p.BATCH_SIZE,
    "grad_clip": p.real(0, open_low=True, optional=True),
    "evals_per_epoch": p.EVALS_PER_EPOCH,
    "kl_samples": p.KL_SAMPLES,
    "budget_batch_size": p.integer(0, p.MAX_BATCH),
    "results_root": p.RESULTS_ROOT,
    "device": p.DEVICE,
}


def check_parameters(values) -> None:
    """Check the grokking notebook's parameters (PARAMETERS) and the rules between them."""
    p.check(PARAMETERS, values)
    train, _ = make_pairs(p.number_line_config(values, ModelConfig().n_ctx))
    per_epoch = p.steps(len(train), values["batch_size"])
    if values["evals_per_epoch"] > per_epoch:
        p.fail(
            "evals_per_epoch",
            f"≤ {per_epoch}, the optimizer steps per epoch ({len(train)} training pairs in batches of {values['batch_size']})",
            values["evals_per_epoch"],
        )


SFT_NEAR_ZERO = 0.05  # C1 reproduced: final SFT OOD rate (tail mean, as on the whole page) ≤ 5 %
SFT_LOW = 0.15  # C1 partly: ≤ 15 %
DRIFTED = 0.5  # C2: a β has drifted when its final OOD rate is ≥ 50 % and rose by ≥ WORSENS
ABOUT_80 = (0.6, 1.0)  # C2: "about 80 %"
RECOVERY = 0.15  # C2: a drifted β came back when final OOD ≤ peak − 15 points
TAIL = 0.1  # "final" = mean over the last 10 % of evaluations
MONOTONE = 0.1  # C3: largest dip ≤ 10 % of the curve's range
WORSENS = 0.1  # C3: OOD rate rises by ≥ 10 points from step 0 to the end


def tail_mean(curve: np.ndarray, frac: float = TAIL) -> float:
    """Mean of the last ceil(frac · n) values."""
    curve = np.asarray(curve, dtype=float)
    return float(curve[-math.ceil(frac * len(curve)) :].mean())


def relative_drawdown(curve: np.ndarray) -> float:
    """Largest drop below the running maximum, as a fraction of the curve's range (0 for a flat curve)."""
    curve = np.asarray(curve, dtype=float)
    span = curve.max() - curve.min()
    return 0.0 if span == 0 else float((np.maximum.accumulate(curve) - curve).max() / span)


def almost_monotone_rise(curve: np.ndarray) -> bool:
    """The curve ends above where it started and never dips by more than MONOTONE of its range."""
    curve = np.asarray(curve, dtype=float)
    return bool(curve[-1] > curve[0] and relative_drawdown(curve) <= MONOTONE)


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def seed_mean_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """DPO metrics averaged over seeds: one row per (beta, step)."""
    dpo = runs[runs["phase"] == "dpo"]
    return dpo.groupby(["beta", "step"], as_index=False)[["ood_rate", "seq_error", "accuracy", "margin", "kl"]].mean()


def grokking_claims(runs: pd.DataFrame) -> pd.DataFrame:
    """The C1–C3 claims table from the output of ``run_sft_then_dpo``."""
    sft = runs[runs["phase"] == "sft"]
    # "final" is the tail mean everywhere on the page (final_ood_table too), per seed
    sft_final = pd.Series([tail_mean(s.sort_values("step")["ood_rate"].to_numpy()) for _, s in sft.groupby("seed")])
    sft_mean = float(sft_final.mean())
    c1 = verdict(sft_mean <= SFT_NEAR_ZERO, sft_mean <= SFT_LOW)

    curves = seed_mean_curves(runs)
    per_beta = {}
    for beta, g in curves.groupby("beta"):
        ood = g.sort_values("step")["ood_rate"].to_numpy()
        final, peak = tail_mean(ood), float(ood.max())
        per_beta[beta] = {
            "final": final,
            "drifted": final >= DRIFTED and final - ood[0] >= WORSENS,
            "recovered": peak >= DRIFTED and peak - final >= RECOVERY,
            "worsens": final - ood[0] >= WORSENS,
            "monotone": almost_monotone_rise(g.sort_values("step")["margin"].to_numpy())
            and almost_monotone_rise(g.sort_values("step")["accuracy"].to_numpy()),
        }
    finals = [v["final"] for v in per_beta.values()]
    any_recovered = any(v["recovered"] for v in per_beta.values())
    all_drifted = all(v["drifted"] for v in per_beta.values())
    c2 = verdict(
        all_drifted and ABOUT_80[0] <= np.mean(finals) <= ABOUT_80[1] and not any_recovered,
        any(v["drifted"] for v in per_beta.values()) and not any_recovered,
    )
    c3 = verdict(
        all(v["monotone"] and v["worsens"] for v in per_beta.values()),
        any(v["monotone"] and v["worsens"] for v in per_beta.values()),
    )

    n_seeds = runs["seed"].nunique()
    finals_text = ", ".join(f"β={b:g}: {_pct(v['final'])}" for b, v in per_beta.items())
    return claims_frame(
        [
            {
                "claim_id": "C1",
                "statement": "The SFT reference gives almost no OOD answers.",
                "paper_value": "nearly 0 % OOD",
                "our_value": f"final (mean of the last {TAIL:.0%} of evaluations) {_pct(sft_mean)} OOD "
                f"(sd {_pct(float(sft_final.std(ddof=0)))} over {n_seeds} seeds)",
                "verdict": c1,
            },
            {
                "claim_id": "C2",
                "statement": "DPO drifts to about 80 % OOD and never comes back.",
                "paper_value": "about 80 % OOD, no recovery",
                "our_value": f"final OOD {finals_text}; " + ("a drifted β recovered" if any_recovered else "no β recovered"),
                "verdict": c2,
            },
            {
                "claim_id": "C3",
                "statement": "Margin and accuracy rise almost monotonically while OOD worsens.",
                "paper_value": "near-monotonic rise while OOD worsens",
                "our_value": f"rise almost monotonically at {sum(v['monotone'] for v in per_beta.values())}/{len(per_beta)} β; "
                f"OOD worsens at {sum(v['worsens'] for v in per_beta.values())}/{len(per_beta)} β",
                "verdict": c3,
            },
        ]
    )


def final_ood_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final OOD rate per run (tail mean per seed), with mean and sd over seeds."""
    rows = []
    for (phase, beta), g in runs.groupby(["phase", "beta"], dropna=False):
        per_seed = [tail_mean(s.sort_values("step")["ood_rate"].to_numpy()) for _, s in g.groupby("seed")]
        rows.append(
            {
                "run": "SFT" if phase == "sft" else f"DPO β={beta:g}",
                "beta": beta,
                "final_ood_mean": float(np.mean(per_seed)),
                "final_ood_sd": float(np.std(per_seed)),
                "seeds": len(per_seed),
            }
        )
    return pd.DataFrame(rows).sort_values("beta", na_position="first", ignore_index=True)


def summarize_final_ood(runs: pd.DataFrame) -> str:
    """A Markdown sentence and table of the final OOD rate of each run."""
    table = final_ood_table(runs)
    lines = [
        "**What we measured.** Final OOD rate (mean of the last 10 % of evaluations, "
        f"mean ± sd over {int(table['seeds'].max())} seed(s)):",
        "",
        "| run | final OOD rate |",
        "| --- | --- |",
    ]
    lines += [f"| {r.run} | {_pct(r.final_ood_mean)} ± {_pct(r.final_ood_sd)} |" for r in table.itertuples()]
    return "\n".join(lines)
