"""The KL sweep of Park §4.2 (Fig. 2): the β grid and the claims C4–C6, decided by code.

The sweep itself is ``park.run_sft_then_dpo``: one batched ensemble over all β per seed,
checkpointed after every evaluation. Functions here take its DPO rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import claims_frame, verdict
from dpo_toolkit.core.parameters import BETA, DRIFTING_ARM, SWEEP_SETUP, check, check_sweep_setup, fail, integer
from dpo_toolkit.core.stats import spearman

# The notebook's `parameters` cell, one spec per variable (notebooks/kl_sweep.md).
PARAMETERS = {
    "n_betas": integer(1),
    "beta_min": BETA,
    "beta_max": BETA,
    **SWEEP_SETUP,
    **DRIFTING_ARM,
    "drift_n_betas": integer(1),
}


def check_parameters(values) -> None:
    """Check the KL-sweep notebook's parameters (PARAMETERS) and the rules between them."""
    check(PARAMETERS, values)
    if values["beta_max"] < values["beta_min"]:
        fail("beta_max", f"≥ beta_min = {values['beta_min']}", values["beta_max"])
    check_sweep_setup(values)


def beta_grid(n: int, low: float, high: float) -> list[float]:
    """n values of β spaced evenly on a log scale in [low, high] (Park §3.3: 30 in [1e-2, 1])."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n_betas must be an integer ≥ 1, got {n!r}")
    if not (0 < low <= high):
        raise ValueError(f"beta range must satisfy 0 < beta_min ≤ beta_max, got [{low}, {high}]")
    return [float(b) for b in np.geomspace(low, high, n)]


# ---- claims C4–C6 -------------------------------------------------------------------

RANK_CORR = 0.8  # C4: Spearman correlation that counts as "grows" / "falls"
BAND_WIDTH = 2.0  # C5: one band = the 10–90 % range of optimal KLs spans at most this factor
PAPER_BAND = (0.25, 0.5)  # C5: the paper's band
U_RISE = 0.05  # C6: each arm of the U rises ≥ 5 points of OOD above its bottom
U_BINS = 10  # C6: equal-count bins of KL over all checkpoints
VARYING_SHARE = 0.5
"""C5's precondition: a least-OOD checkpoint is an argmin over ties when a run's OOD rate is
the same at every checkpoint, so at least this share of (seed, β) runs must have an OOD rate
that changes along the run; the band is taken over those runs."""


def checkpoints(sweep: pd.DataFrame) -> pd.DataFrame:
    """The DPO checkpoints: evaluations after step 0 (step 0 is the SFT reference itself)."""
    return sweep[sweep["step"] > 0]


def least_ood_checkpoints(sweep: pd.DataFrame) -> pd.DataFrame:
    """For each (seed, β): the DPO checkpoint with the lowest OOD rate, ties going to the earliest.
    Column `ood_varies`: whether that run's OOD rate changes along its checkpoints (else the
    choice is a tie-break, not an optimum)."""
    dpo = checkpoints(sweep).sort_values(["seed", "beta", "ood_rate", "step"])
    spread = dpo.groupby(["seed", "beta"])["ood_rate"].agg(lambda x: x.max() - x.min())
    optimal = dpo.groupby(["seed", "beta"], as_index=False).first()
    return optimal.assign(ood_varies=(spread.to_numpy() > 0))


def kl_band(optimal: pd.DataFrame) -> tuple[float, float]:
    """The 10th–90th percentile range of the KL of least-OOD checkpoints, pooled over seeds and β."""
    return float(optimal["kl"].quantile(0.1)), float(optimal["kl"].quantile(0.9))


def u_shape_bins(kl: np.ndarray, ood: np.ndarray, n_bins: int = U_BINS) -> pd.DataFrame:
    """Mean OOD rate in n_bins equal-count bins of KL (checkpoints with KL > 0), in KL order.

    Returns one row per bin: kl (the bin's median KL) and ood_rate (its mean OOD rate).
    The shape test reads these means directly, so no fitted curve can supply an arm
    that the data do not have.
    """
    keep = np.asarray(kl) > 0
    data = pd.DataFrame({"kl": np.asarray(kl)[keep], "ood_rate": np.asarray(ood, dtype=float)[keep]})
    data["bin"] = pd.qcut(data["kl"].rank(method="first"), n_bins, labels=False)
    return data.groupby("bin").agg(kl=("kl", "median"), ood_rate=("ood_rate", "mean")).reset_index(drop=True)


def u_shape(bins: pd.DataFrame) -> dict[str, float]:
    """Where the binned OOD curve bottoms out and how far it rises from there to each end."""
    ood = bins["ood_rate"].to_numpy()
    bottom = int(ood.argmin())
    return {
        "bottom_kl": float(bins["kl"].iloc[bottom]),
        "interior": bool(0 < bottom < len(ood) - 1),
        "left_rise": float(ood[0] - ood[bottom]),
        "right_rise": float(ood[-1] - ood[bottom]),
    }


def sweep_claims(sweep: pd.DataFrame) -> pd.DataFrame:
    """The C4–C6 claims table from the DPO rows of ``run_sft_then_dpo`` (any number of seeds)."""
    n_seeds = sweep["seed"].nunique()
    mean = sweep.groupby(["beta", "step"], as_index=False)[["kl", "ood_rate"]].mean()
    grows = [spearman(g["step"], g["kl"]) for _, g in mean.groupby("beta")]
    final = mean[mean["step"] == mean["step"].max()]
    falls = spearman(final["beta"], final["kl"])
    share_growing = float(np.mean(np.array(grows) >= RANK_CORR))
    c4_grow, c4_fall = share_growing >= 0.9, falls <= -RANK_CORR
    c4 = verdict(c4_grow and c4_fall, c4_grow or c4_fall)

    all_optima = least_ood_checkpoints(sweep)
    varying = float(all_optima["ood_varies"].mean())
    optimal = all_optima[all_optima["ood_varies"]] if varying >= VARYING_SHARE else all_optima
    lo, hi = kl_band(optimal)
    per_seed = optimal.groupby("seed")["kl"].median()
    one_band = lo > 0 and hi / lo <= BAND_WIDTH
    overlaps = lo <= PAPER_BAND[1] and hi >= PAPER_BAND[0]
    c5 = verdict(one_band and overlaps, one_band, testable=varying >= VARYING_SHARE)

    dpo = checkpoints(sweep)
    fit = u_shape(u_shape_bins(dpo["kl"].to_numpy(), dpo["ood_rate"].to_numpy()))
    u_shaped = fit["interior"] and min(fit["left_rise"], fit["right_rise"]) >= U_RISE
    one_arm = max(fit["left_rise"], fit["right_rise"]) >= U_RISE
    c6 = verdict(u_shaped, one_arm)

    return claims_frame(
        [
            {
                "claim_id": "C4",
                "statement": "KL grows with DPO steps and falls with β.",
                "paper_value": "KL rises with N and falls with log β",
                "our_value": f"Spearman(step, KL) ≥ {RANK_CORR} at {100 * share_growing:.0f} % of β; "
                f"Spearman(β, final KL) = {falls:.2f}",
                "verdict": c4,
            },
            {
                "claim_id": "C5",
                "statement": "The least-OOD checkpoints of every β share one KL band.",
                "paper_value": f"KL {PAPER_BAND[0]}–{PAPER_BAND[1]}",
                "our_value": f"KL {lo:.2f}–{hi:.2f} (10–90 % of {len(optimal)} optima over {n_seeds} seeds; "
                f"per-seed median {per_seed.mean():.2f} ± {per_seed.std(ddof=0):.2f})",
                "verdict": c5,
                "precondition": f"OOD rate changes along the run in ≥ {VARYING_SHARE:.0%} of (seed, β) runs "
                f"(else the least-OOD checkpoint is a tie-break): {varying:.0%} of {len(all_optima)}",
            },
            {
                "claim_id": "C6",
                "statement": "OOD rate against KL is U-shaped.",
                "paper_value": "U-shaped, optima at its bottom",
                "our_value": f"mean OOD in {U_BINS} KL bins bottoms out at KL {fit['bottom_kl']:.2f} "
                f"({'inside' if fit['interior'] else 'at an end of'} the range); "
                f"rise to the low-KL end {fit['left_rise']:+.2f}, to the high-KL end {fit['right_rise']:+.2f}",
                "verdict": c6,
            },
        ]
    )
