"""Claims C1–C3 of the grokking chapter (Park §4.1, Fig. 1), decided by code.

Every claim is decided on intervals over seeds (core.evidence): its quantities are
computed once per seed, on that seed's own curves (the runs of all β of one seed share
a reference, so a seed is one replicate), and summarised by ``mean_interval``.
Thresholds are fixed here, before any result is seen, from the paper's words ("nearly
no OOD", "about 80 %", "never comes back", "near-monotonic").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from dpo_toolkit.core import parameters as p
from dpo_toolkit.core import validate as v
from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.config import OPTIMIZERS, ModelConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.evidence import Check, mean_interval
from dpo_toolkit.recipes import parameter_sets as sets

# The notebook's `parameters` cell, one spec per variable (notebooks/grokking.md).
PARAMETERS = {
    "betas": dataclasses.replace(p.BETAS, scalar_ok=True),  # a single β also works
    "seeds": p.SEEDS,
    **sets.NUMBER_LINE,
    "sft_epochs": p.EPOCHS,
    "dpo_epochs": p.EPOCHS,
    "optimizer": v.choice(*OPTIMIZERS),
    "lr": p.LEARNING_RATE,
    "weight_decay": v.real(0),
    "batch_size": p.BATCH_SIZE,
    "grad_clip": v.real(0, open_low=True, optional=True),
    "evals_per_epoch": p.EVALS_PER_EPOCH,
    "kl_samples": p.KL_SAMPLES,
    "budget_batch_size": v.integer(0, p.MAX_BATCH),
    "results_root": p.RESULTS_ROOT,
    "device": p.DEVICE,
}


def check_parameters(values) -> None:
    """Check the grokking notebook's parameters (PARAMETERS) and the rules between them."""
    p.check(PARAMETERS, values)
    train, _ = make_pairs(sets.number_line_config(values, ModelConfig().n_ctx))
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
ABOUT_80 = (0.6, 1.0)  # C2: "about 80 %" (a rate cannot exceed 1: only the low end is a check)
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


def rise_defect(curve: np.ndarray) -> float:
    """How far a curve is from an almost monotone rise: its relative drawdown when it ends above
    where it started, else 1 (the whole range). ``almost_monotone_rise`` ⇔ defect ≤ MONOTONE."""
    curve = np.asarray(curve, dtype=float)
    return relative_drawdown(curve) if curve[-1] > curve[0] else 1.0


def run_statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per DPO run (seed, β), read on that seed's own curve: `final` (tail mean) OOD rate,
    its `rise` from step 0, `fallback` (peak − final where the peak reached DRIFTED, else 0),
    `defect` (the larger ``rise_defect`` of margin and accuracy), and the slack of C2's and C3's
    per-β conditions: `drift_slack` = min(final − DRIFTED, rise − WORSENS) and `c3_slack` =
    min(MONOTONE − defect, rise − WORSENS), each ≥ 0 exactly when the β drifted / rose
    monotonically while its OOD worsened."""
    rows = []
    for (seed, beta), g in runs[runs["phase"] == "dpo"].groupby(["seed", "beta"]):
        g = g.sort_values("step")
        ood = g["ood_rate"].to_numpy()
        final, peak = tail_mean(ood), float(ood.max())
        rise = final - float(ood[0])
        defect = max(rise_defect(g["margin"].to_numpy()), rise_defect(g["accuracy"].to_numpy()))
        rows.append(
            {
                "seed": seed,
                "beta": beta,
                "final": final,
                "rise": rise,
                "fallback": peak - final if peak >= DRIFTED else 0.0,
                "defect": defect,
                "drift_slack": min(final - DRIFTED, rise - WORSENS),
                "c3_slack": min(MONOTONE - defect, rise - WORSENS),
            }
        )
    return pd.DataFrame(rows)


def _pm(values, unit: str = " %") -> str:
    """mean ± sd over seeds (sd omitted for one seed): rates ×100 with `unit` (" %", " points"),
    or to two decimals when unit is ""."""
    x = np.asarray(values, dtype=float)
    scale, digits = (100, 0) if unit else (1, 2)
    spread = f" ± {scale * x.std(ddof=1):.{digits}f}" if x.size > 1 else ""
    return f"{scale * x.mean():.{digits}f}{spread}{unit}"


# The static text of every claim (what it says, what the paper reports), by claim id.
CLAIMS = {
    "C1": ClaimText("The SFT reference gives almost no OOD answers.", "nearly 0 % OOD"),
    "C2": ClaimText("DPO drifts to about 80 % OOD and never comes back.", "about 80 % OOD, no recovery"),
    "C3": ClaimText("Margin and accuracy rise almost monotonically while OOD worsens.", "near-monotonic rise while OOD worsens"),
}


def sft_finals(runs: pd.DataFrame) -> np.ndarray:
    """The final (tail-mean) SFT OOD rate of each seed, in seed order: "final" is the tail mean
    everywhere on the page (final_ood_table too)."""
    sft = runs[runs["phase"] == "sft"]
    return np.array([tail_mean(s.sort_values("step")["ood_rate"].to_numpy()) for _, s in sft.groupby("seed")])


def seed_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per seed of ``run_statistics``: what C2 and C3 read of its β. "Every β" is read per
    seed as its worst β (every β drifted ⇔ the lowest final ≥ DRIFTED and the smallest rise ≥
    WORSENS), "some β" as its best β (the largest slack of the β's joint condition ≥ 0); "no β came
    back" as the seed's largest fall below a drifted peak ≤ RECOVERY."""
    return stats.groupby("seed").agg(
        lowest_final=("final", "min"),
        mean_final=("final", "mean"),
        smallest_rise=("rise", "min"),
        largest_fallback=("fallback", "max"),
        best_drift=("drift_slack", "max"),
        worst_defect=("defect", "max"),
        best_c3=("c3_slack", "max"),
    )


def _c1_verdict(sft_final: np.ndarray) -> dict:
    """C1's verdict fields: the final SFT OOD rate near zero (full) or low (part)."""
    sft_interval = mean_interval(sft_final)
    c1_full = Check("final SFT OOD rate, per seed", sft_interval, SFT_NEAR_ZERO, above=False)
    c1_part = Check("final SFT OOD rate, per seed", sft_interval, SFT_LOW, above=False)
    return decide(c1_full, part=c1_part)


def _c2_c3_verdicts(per_seed: pd.DataFrame) -> tuple[dict, dict]:
    """C2's and C3's verdict fields, each on its checks over the seeds of ``seed_summary``."""
    no_recovery = Check(
        "largest fall below a drifted peak, per seed", mean_interval(per_seed["largest_fallback"]), RECOVERY, above=False
    )
    rises = Check("smallest OOD rise over β from step 0, per seed", mean_interval(per_seed["smallest_rise"]), WORSENS)
    c2_full = [
        Check("lowest final OOD rate over β, per seed", mean_interval(per_seed["lowest_final"]), DRIFTED),
        rises,
        Check("mean final OOD rate over β, per seed", mean_interval(per_seed["mean_final"]), ABOUT_80[0]),
        no_recovery,
    ]
    c2_part = [Check("drift slack of the most drifted β, per seed", mean_interval(per_seed["best_drift"]), 0.0), no_recovery]
    c3_full = [
        Check(
            "largest margin/accuracy dip over β (share of range), per seed",
            mean_interval(per_seed["worst_defect"]),
            MONOTONE,
            above=False,
        ),
        rises,
    ]
    c3_part = Check("C3 slack of the best β, per seed", mean_interval(per_seed["best_c3"]), 0.0)
    return decide(c2_full, part=c2_part), decide(c3_full, part=c3_part)


def _our_values(sft_final: np.ndarray, stats: pd.DataFrame, per_seed: pd.DataFrame) -> dict[str, str]:
    """The `our_value` text of C1–C3: what was measured, mean ± sd over seeds."""
    n_seeds = len(sft_final)
    seeds = f"mean ± sd over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    finals_text = ", ".join(f"β={b:g}: {_pm(g['final'])}" for b, g in stats.groupby("beta"))
    n_monotone = int((stats["defect"] <= MONOTONE).sum())
    n_worsens = int((stats["rise"] >= WORSENS).sum())
    return {
        "C1": f"final (mean of the last {TAIL:.0%} of evaluations) {_pm(sft_final)} OOD ({seeds})",
        "C2": f"final OOD {finals_text}; largest fall below a drifted peak "
        f"{_pm(per_seed['largest_fallback'], ' points')} ({seeds})",
        "C3": f"largest dip of margin or accuracy {_pm(per_seed['worst_defect'], '')} of its range "
        f"(1 where it does not end higher), smallest OOD rise {_pm(per_seed['smallest_rise'], ' points')} ({seeds}); "
        f"of {len(stats)} (seed, β) runs, {n_monotone} rise almost monotonically and {n_worsens} worsen in OOD",
    }


def grokking_claims(runs: pd.DataFrame) -> pd.DataFrame:
    """The C1–C3 claims table from the output of ``run_sft_then_dpo``, decided on intervals over
    seeds; with fewer than MIN_REPLICATES seeds every verdict is inconclusive. C2 and C3 are read
    per seed, each on the seed's own curves (``run_statistics``, ``seed_summary``)."""
    sft_final = sft_finals(runs)
    stats = run_statistics(runs)
    per_seed = seed_summary(stats)
    c1 = _c1_verdict(sft_final)
    c2, c3 = _c2_c3_verdicts(per_seed)
    verdicts = {"C1": c1, "C2": c2, "C3": c3}
    ours = _our_values(sft_final, stats, per_seed)
    return claims_frame([{"claim_id": c, "our_value": ours[c], **verdicts[c]} for c in CLAIMS], text=CLAIMS)


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
