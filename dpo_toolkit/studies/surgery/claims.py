"""Claims C7–C9 of the surgery chapter, decided on intervals over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.evidence import Check, conjunction, mean_interval

from .study import SURGERIES

KL_GAP = 2.0  # C7: KL of the smallest β over the largest, at matched WeightDelta
TAMED = 0.5  # C8: a surgery tames A when KL(A') ≤ TAMED · KL(A)
SMALL_SHARE = 0.35  # C9: the paper's "only ever 25 %", with room for noise
A_OOD = 0.05
B_OOD = 0.15  # C8: B stays in distribution, ≤ 15 % OOD at its last checkpoint (the donor of "in-distribution" attention)
"""C8's precondition: there is OOD behaviour to tame, i.e. A answers OOD on at least this
share of the test prompts at its last checkpoint (one prompt in twenty)."""
PAPER_ATTENTION_SHARE = 0.25


def matched_kl_ratio(low: pd.DataFrame, high: pd.DataFrame, n_points: int = 10) -> float:
    """Median over n_points WeightDelta values in the range both runs cover of
    KL_low(WD) / KL_high(WD), each interpolated linearly in WD along its run's checkpoints
    (step > 0, sorted by WD). NaN when the ranges do not overlap."""
    low, high = (d[d["step"] > 0].sort_values("weight_delta") for d in (low, high))
    lo = max(low["weight_delta"].min(), high["weight_delta"].min())
    hi = min(low["weight_delta"].max(), high["weight_delta"].max())
    if not lo < hi:
        return float("nan")
    grid = np.linspace(lo, hi, n_points)
    kl_low = np.interp(grid, low["weight_delta"], low["kl"])
    kl_high = np.interp(grid, high["weight_delta"], high["kl"])
    return float(np.median(kl_low / kl_high))


# The static text of every claim (what it says, what the paper reports), by claim id.
CLAIMS = {
    "C7": ClaimText(
        "Equal weight deltas give different KL at different β.", "same WeightDelta, different KL across β", "Fig. 3 right"
    ),
    "C8": ClaimText(
        "Swapping in B's attention weights tames A's KL and OOD; swapping the rest does not.",
        "attention swap: KL grows slowly, OOD dips; non-attention swap: KL explodes, OOD barely moves",
    ),
    "C9": ClaimText(
        "Attention receives about 25 % of the weight change while holding about 65 % of the parameters.",
        f"{PAPER_ATTENTION_SHARE:.0%} of the change; attention holds 65K of 104K parameters",
    ),
}


def _pm(s: pd.Series, fmt: str = ".2f") -> str:
    """Mean ± sd over seeds (the value alone for one seed)."""
    return f"{s.mean():{fmt}} ± {s.std(ddof=1):.2f}" if s.count() > 1 else f"{s.mean():{fmt}}"


def _c7_row(sweep: pd.DataFrame, seeds: str) -> dict:
    """C7's row fields: KL of the smallest β over the largest at matched WeightDelta, per seed;
    its precondition is that every seed's two runs share a WeightDelta range."""
    beta_low, beta_high = sweep["beta"].min(), sweep["beta"].max()
    ratios = pd.Series(
        {seed: matched_kl_ratio(g[g["beta"] == beta_low], g[g["beta"] == beta_high]) for seed, g in sweep.groupby("seed")}
    )
    matched = bool(ratios.notna().all())
    # The old partly ("in some seeds, or on average") was a weaker reading of the same threshold, not a
    # part of the claim: on intervals it is what `inconclusive` says, so C7 has no part.
    return {
        "our_value": f"KL(β={beta_low:g}) / KL(β={beta_high:g}) at matched WeightDelta (median over the shared "
        f"WeightDelta range), mean ± sd over {seeds}: {_pm(ratios)}",
        **decide(Check("KL(β low)/KL(β high) at matched WeightDelta", mean_interval(ratios), KL_GAP), precondition=matched),
        "precondition": f"the two β's runs share a WeightDelta range in every seed: {int(ratios.notna().sum())} of {len(ratios)}",
    }


def _c8_precondition(sweep: pd.DataFrame, a_ood_seed: pd.Series) -> tuple[Check, str]:
    """C8's precondition (A goes OOD, B does not, at their last checkpoints; per seed) and its text.
    Two thresholds, one precondition: the check that decides their conjunction (the first that
    fails, else the first undecided, else one that holds)."""
    last = sweep[sweep["step"] == sweep["step"].max()]
    b_ood_seed = last[np.isclose(last["beta"], sweep["beta"].max())].groupby("seed")["ood_rate"].mean()
    a_ood, b_ood = float(a_ood_seed.mean()), float(b_ood_seed.mean())
    _, check = conjunction(
        [
            Check("OOD rate of A at its last checkpoint", mean_interval(a_ood_seed), A_OOD),
            Check("OOD rate of B at its last checkpoint", mean_interval(b_ood_seed), B_OOD, above=False),
        ]
    )
    text = (
        f"at their last checkpoints A answers OOD on ≥ {A_OOD:.0%} of test prompts and B on "
        f"≤ {B_OOD:.0%} (means over seeds, read on their intervals): A {a_ood:.1%}, B {b_ood:.1%}"
    )
    return check, text


def _c8_row(sweep: pd.DataFrame, curves: pd.DataFrame, seeds: str) -> dict:
    """C8's row fields: at A's last checkpoint, per seed, swapping in B's attention tames A's KL
    and OOD (the part carrying the effect) and swapping the rest does not."""
    final = curves[curves["step"] == curves["step"].max()].pivot_table(index="seed", columns="variant", values=["kl", "ood_rate"])
    kl_ratio = {v: final["kl"][v] / final["kl"]["A"] for v in SURGERIES}  # per seed
    ood_change = {v: final["ood_rate"][v] - final["ood_rate"]["A"] for v in SURGERIES}
    attention_tames = [
        Check("KL(A')/KL(A), attention swapped", mean_interval(kl_ratio["attention"]), TAMED, above=False),
        Check("OOD(A') − OOD(A), attention swapped", mean_interval(ood_change["attention"]), 0.0, above=False),
    ]
    rest_does_not = Check("KL(A')/KL(A), rest swapped", mean_interval(kl_ratio["non-attention"]), TAMED)
    a_ood_seed = final["ood_rate"]["A"]
    precondition, precondition_text = _c8_precondition(sweep, a_ood_seed)
    return {
        "our_value": f"at A's last checkpoint, mean ± sd over {seeds}: KL(A')/KL(A) = "
        f"{_pm(kl_ratio['attention'])} (attention swapped) vs {_pm(kl_ratio['non-attention'])} (rest swapped); "
        f"OOD(A') − OOD(A) = {_pm(ood_change['attention'], '+.2f')} vs {_pm(ood_change['non-attention'], '+.2f')}; "
        f"OOD(A) = {_pm(a_ood_seed)}",
        **decide([*attention_tames, rest_does_not], part=attention_tames, precondition=precondition),
        "precondition": precondition_text,
    }


def _c9_row(curves: pd.DataFrame, param_counts: dict[str, int], seeds: str) -> dict:
    """C9's row fields: the paper's "only ever 25 %" as the largest attention share of a step's
    change, once per seed (the old rule took the largest over every seed at once, a pooled statistic
    that grows with the number of seeds); the median share is the part."""
    param_share = param_counts["attention"] / sum(param_counts.values())
    a = curves[curves["variant"] == "A"]
    share = a.groupby("seed")["attention_share_step"].median()
    share_max_seed = a.groupby("seed")["attention_share_step"].max()
    share_max = a["attention_share_step"].max()
    return {
        "our_value": f"attention share of A's change between checkpoints, mean ± sd over {seeds}: largest "
        f"{_pm(share_max_seed)}, median {_pm(share)} (largest over every seed {share_max:.2f}); "
        f"attention holds {param_share:.1%} of the parameters",
        **decide(
            Check("largest attention share of a step's change", mean_interval(share_max_seed), SMALL_SHARE, above=False),
            part=Check("median attention share of a step's change", mean_interval(share), SMALL_SHARE, above=False),
        ),
    }


def surgery_claims(sweep: pd.DataFrame, curves: pd.DataFrame, param_counts: dict[str, int]) -> pd.DataFrame:
    """The C7–C9 claims table.

    sweep: DPO rows of ``run_sft_then_dpo`` over the β grid (with weight_delta and kl);
    curves: ``surgery_curves`` of each seed with a `seed` column; param_counts:
    ``group_param_counts`` of the model. Every deciding quantity is computed once per seed (a
    seed is one replicate: its reference, initialisation and data order; A and B of one seed
    share them) and read as the 95 % interval of its mean over seeds (``core.evidence``).
    """
    n_seeds = curves["seed"].nunique()
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    rows = {"C7": _c7_row(sweep, seeds), "C8": _c8_row(sweep, curves, seeds), "C9": _c9_row(curves, param_counts, seeds)}
    return claims_frame([{"claim_id": c, **rows[c]} for c in CLAIMS], text=CLAIMS)
