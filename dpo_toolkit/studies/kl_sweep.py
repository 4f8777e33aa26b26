"""The KL sweep of Park §4.2 (Fig. 2): the β grid and the claims C4–C6, decided by code.

The sweep itself is ``run_sft_then_dpo``: one batched ensemble over every (seed, β), each seed against its own reference,
checkpointed after every evaluation. Functions here take its DPO rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.evidence import Check, either, mean_interval
from dpo_toolkit.core.parameters import BETA, check, fail
from dpo_toolkit.core.stats import spearman
from dpo_toolkit.core.validate import integer
from dpo_toolkit.recipes.parameter_sets import DRIFTING_ARM, SWEEP_SETUP, check_sweep_setup

# The notebook's `parameters` cell, one spec per variable (notebooks/kl_sweep.md).
PARAMETERS = {
    "n_betas": integer(1, 300),  # paper profile: 30
    "beta_min": BETA,
    "beta_max": BETA,
    **SWEEP_SETUP,
    **DRIFTING_ARM,
    "drift_n_betas": integer(1, 100),  # paper profile: 10
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
#
# Every claim is decided on intervals over seeds (core.evidence): its quantity is computed once
# per seed (the runs of all β of one seed share a reference and a data order, so they are one
# replicate, not many), summarised by ``mean_interval`` and read against the thresholds below.

RANK_CORR = 0.8  # C4: Spearman correlation that counts as "grows" / "falls"
GROW_SHARE = 0.9  # C4: KL grows with step at ≥ 90 % of β (per seed)
BAND_WIDTH = 2.0  # C5: one band = the 10–90 % range of optimal KLs spans at most this factor
PAPER_BAND = (0.25, 0.5)  # C5: the paper's band
U_RISE = 0.05  # C6: each arm of the U rises ≥ 5 points of OOD above its bottom
U_BINS = 10  # C6: equal-count bins of KL over a seed's checkpoints
VARYING_SHARE = 0.5
"""C5's precondition: a least-OOD checkpoint is an argmin over ties when a run's OOD rate is
the same at every checkpoint, so on average over seeds at least this share of a seed's β runs
must have an OOD rate that changes along the run; each seed's band is taken over those runs."""


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
    """The 10th–90th percentile range of the KL of least-OOD checkpoints (of whatever runs
    `optimal` holds: pooled over seeds for the figures, one seed's for C5)."""
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


def seed_statistics(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per seed: the quantities C4–C6 are decided on.

    - C4: ``grow_share``, the share of β whose KL grows with step (Spearman(step, KL) ≥ RANK_CORR;
      a KL constant along the run does not grow), and ``fall``, Spearman(β, KL at the seed's last
      step), read as 0 (no fall) where it is undefined (one β, or the same final KL at every β);
    - C5: ``varying_share``, the share of β runs whose OOD rate changes along the run; ``band_low``
      and ``band_high``, the 10 % and 90 % quantiles of the least-OOD KLs over the seed's varying
      runs (over all its runs if none varies: the precondition then says so), and ``tightness``,
      band_low / band_high (0 when band_low is 0), which is ≥ 1/BAND_WIDTH exactly when the band
      spans at most a factor BAND_WIDTH;
    - C6: the seed's binned OOD curve against KL (``u_shape_bins`` over its checkpoints, at most
      U_BINS bins): ``bottom_kl``, ``interior``, ``u_depth``, the rise of its shallower arm above
      the bottom (≥ U_RISE means a U: a bottom at an end has an arm of 0) and ``deeper_arm``, the
      rise of its other arm.
    """
    optima = least_ood_checkpoints(sweep)
    rows = []
    for seed, runs in sweep.groupby("seed"):
        grows = [spearman(g["step"], g["kl"]) for _, g in runs.groupby("beta")]
        final = runs[runs["step"] == runs["step"].max()]
        fall = spearman(final["beta"], final["kl"])

        mine = optima[optima["seed"] == seed]
        used = mine[mine["ood_varies"]] if mine["ood_varies"].any() else mine
        low, high = kl_band(used)

        dpo = checkpoints(runs)
        n_positive = int((dpo["kl"] > 0).sum())
        if n_positive:
            fit = u_shape(u_shape_bins(dpo["kl"].to_numpy(), dpo["ood_rate"].to_numpy(), min(U_BINS, n_positive)))
        else:  # no checkpoint moved from the reference: no curve, no arm
            fit = {"bottom_kl": 0.0, "interior": False, "left_rise": 0.0, "right_rise": 0.0}
        rows.append(
            {
                "seed": seed,
                "grow_share": float(np.mean(np.array(grows) >= RANK_CORR)),  # NaN ≥ x is False
                "fall": 0.0 if np.isnan(fall) else fall,
                "varying_share": float(mine["ood_varies"].mean()),
                "band_low": low,
                "band_high": high,
                "tightness": low / high if low > 0 else 0.0,
                "bottom_kl": fit["bottom_kl"],
                "interior": fit["interior"],
                "u_depth": min(fit["left_rise"], fit["right_rise"]),
                "deeper_arm": max(fit["left_rise"], fit["right_rise"]),
            }
        )
    return pd.DataFrame(rows)


def _pm(values, digits: int = 2) -> str:
    """mean ± sd over seeds (sd omitted for one seed)."""
    x = np.asarray(values, dtype=float)
    return f"{x.mean():.{digits}f}" + (f" ± {x.std(ddof=1):.{digits}f}" if x.size > 1 else "")


# The static text of every claim (what it says, what the paper reports), by claim id.
CLAIMS = {
    "C4": ClaimText("KL grows with DPO steps and falls with β.", "KL rises with N and falls with log β"),
    "C5": ClaimText("The least-OOD checkpoints of every β share one KL band.", f"KL {PAPER_BAND[0]}–{PAPER_BAND[1]}"),
    "C6": ClaimText("OOD rate against KL is U-shaped.", "U-shaped, optima at its bottom"),
}


def _c4_verdict(per_seed: pd.DataFrame) -> dict:
    """C4's verdict fields: KL grows with step at most β and falls with β (either one is the part)."""
    grow = Check(
        f"share of β whose KL grows with step (Spearman ≥ {RANK_CORR}), per seed",
        mean_interval(per_seed["grow_share"]),
        GROW_SHARE,
    )
    fall = Check("Spearman(β, final KL), per seed", mean_interval(per_seed["fall"]), -RANK_CORR, above=False)
    return decide([grow, fall], part=either([grow], [fall]))


def _c5_verdict(per_seed: pd.DataFrame) -> dict:
    """C5's verdict fields, read per seed: each seed's band over its β is one band (tightness) and
    meets the paper's band (its low end ≤ the paper's high end, its high end ≥ the paper's low
    end). The bands of different seeds must agree too: where they do not, the intervals of
    band_low and band_high over seeds widen, and the location checks cannot hold."""
    varying = Check(
        "share of β runs whose OOD rate changes along the run, per seed", mean_interval(per_seed["varying_share"]), VARYING_SHARE
    )
    tight = Check(
        "band tightness (10 % / 90 % quantile of least-OOD KL), per seed", mean_interval(per_seed["tightness"]), 1 / BAND_WIDTH
    )
    low_end = Check(
        "band's low end (10 % quantile of least-OOD KL), per seed",
        mean_interval(per_seed["band_low"]),
        PAPER_BAND[1],
        above=False,
    )
    high_end = Check(
        "band's high end (90 % quantile of least-OOD KL), per seed", mean_interval(per_seed["band_high"]), PAPER_BAND[0]
    )
    return decide([tight, low_end, high_end], part=tight, precondition=varying)


def _c6_verdict(per_seed: pd.DataFrame) -> dict:
    """C6's verdict fields: both arms of the binned OOD-vs-KL curve rise (one arm is the part)."""
    u_depth = Check(
        "rise of the shallower arm of the binned OOD-vs-KL curve, per seed", mean_interval(per_seed["u_depth"]), U_RISE
    )
    one_arm = Check(
        "rise of the deeper arm of the binned OOD-vs-KL curve, per seed", mean_interval(per_seed["deeper_arm"]), U_RISE
    )
    return decide(u_depth, part=one_arm)


def _measured(per_seed: pd.DataFrame) -> dict[str, dict[str, str]]:
    """The measured text of C4–C6 (mean ± sd over seeds): each claim's `our_value`, and C5's
    `precondition`."""
    n_seeds = len(per_seed)
    seeds = f"over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    return {
        "C4": {
            "our_value": f"Spearman(step, KL) ≥ {RANK_CORR} at {_pm(100 * per_seed['grow_share'], 0)} % of β; "
            f"Spearman(β, final KL) = {_pm(per_seed['fall'])} (mean ± sd {seeds})"
        },
        "C5": {
            "our_value": f"per-seed band (10–90 % of its least-OOD KLs) from {_pm(per_seed['band_low'])} "
            f"to {_pm(per_seed['band_high'])}, tightness {_pm(per_seed['tightness'])} (mean ± sd {seeds})",
            "precondition": f"OOD rate changes along the run in ≥ {VARYING_SHARE:.0%} of a seed's β runs "
            f"(else the least-OOD checkpoint is a tie-break), on average over seeds: "
            f"{_pm(100 * per_seed['varying_share'], 0)} % {seeds}",
        },
        "C6": {
            "our_value": f"per seed, mean OOD in ≤ {U_BINS} KL bins bottoms out at KL {_pm(per_seed['bottom_kl'])}, "
            f"inside the range in {int(per_seed['interior'].sum())} of {n_seeds} seeds; its shallower arm rises "
            f"{_pm(per_seed['u_depth'])}, its deeper arm {_pm(per_seed['deeper_arm'])} (mean ± sd {seeds})"
        },
    }


def sweep_claims(sweep: pd.DataFrame) -> pd.DataFrame:
    """The C4–C6 claims table from the DPO rows of ``run_sft_then_dpo`` (any number of seeds).

    Each claim's quantities are computed per seed (``seed_statistics``) and decided on their
    intervals over seeds; with fewer than MIN_REPLICATES seeds every verdict is inconclusive."""
    per_seed = seed_statistics(sweep)
    verdicts = {"C4": _c4_verdict(per_seed), "C5": _c5_verdict(per_seed), "C6": _c6_verdict(per_seed)}
    measured = _measured(per_seed)
    return claims_frame([{"claim_id": c, **verdicts[c], **measured[c]} for c in CLAIMS], text=CLAIMS)
