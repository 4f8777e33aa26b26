"""What counts as drifting out of distribution, and what as a collapse, one rule each for the whole book.

A run *drifts* when its greedy OOD rate on the test prompts is ≥ DRIFT_OOD and at least
DRIFT_RISE above its reference's: the thresholds of the grokking chapter's C2 (50 %,
10 points). The drift map applies it to each run's last checkpoint; the CHES chapter's C21
to the seed-mean of its all-pairs runs, as the precondition that there is drift to reduce.

A run *collapses* when preference learning fails while the policy moves (``collapse_reasons``):
chance accuracy with the loss at log 2, or a jump out of distribution within the first few
updates. A collapsed run is reported as what it is, never counted as drift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evidence import Check, clustered_share_interval

DRIFT_OOD = 0.5  # a run has drifted when its greedy OOD rate is ≥ 50 % …
DRIFT_RISE = 0.1  # … and ≥ 10 points above its reference's


def drifted(ood: np.ndarray | pd.Series | float, reference_ood: np.ndarray | pd.Series | float) -> np.ndarray:
    """Whether each run drifted: OOD rate ≥ DRIFT_OOD and ≥ DRIFT_RISE above its reference's."""
    ood, reference_ood = np.asarray(ood, dtype=float), np.asarray(reference_ood, dtype=float)
    return (ood >= DRIFT_OOD) & (ood - reference_ood >= DRIFT_RISE - 1e-12)


COLLAPSE_ACCURACY = 0.6
"""A run has *collapsed* when preference learning failed while the policy moved out of distribution
(its greedy OOD rate rose ≥ DRIFT_RISE above its reference's): held-out preference accuracy at the
end ≤ 0.6 (chance is 0.5) …"""
COLLAPSE_LOSS = 0.02
"""… with its DPO training loss at the end within 0.02 of log 2 (the loss of zero margins: the
implicit reward never separated y_w from y_l) — or ≥ COLLAPSE_JUMP OOD already at its first checkpoint."""
COLLAPSE_JUMP = 0.5
"""A run that is ≥ 50 % OOD at its first checkpoint after the reference (when the reference was below
that) jumped out of distribution within a few updates: Park's drift is gradual, this is a break."""


def collapse_reasons(accuracy, loss, first_ood, ood, reference_ood) -> np.ndarray:
    """Why each run collapsed ('' when it did not): 'no preference learning' (its OOD rate rose ≥
    DRIFT_RISE by the end, with end accuracy ≤ COLLAPSE_ACCURACY and end loss within COLLAPSE_LOSS of
    log 2) and/or 'OOD jump at the first checkpoint' (≥ COLLAPSE_JUMP there, from a reference below
    it). A run that has not moved is no collapse (a short run that has not learned yet). A collapse
    is never a drift: the policy did not learn the preferences and extrapolate, it broke (issue:
    Park's drift as a graded effect). NaN inputs (a diverged run) give no reason."""
    accuracy, loss, first_ood, ood, reference_ood = (
        np.asarray(x, dtype=float) for x in (accuracy, loss, first_ood, ood, reference_ood)
    )
    moved = ood - reference_ood >= DRIFT_RISE - 1e-12  # 1e-12: float slack at the threshold, as drifted()
    no_learning = moved & (accuracy <= COLLAPSE_ACCURACY) & (np.abs(loss - np.log(2)) <= COLLAPSE_LOSS + 1e-12)
    jump = (first_ood >= COLLAPSE_JUMP) & (reference_ood < COLLAPSE_JUMP)
    learning, jumping = "no preference learning", "OOD jump at the first checkpoint"
    both = f"{learning}; {jumping}"
    return np.where(no_learning & jump, both, np.where(no_learning, learning, np.where(jump, jumping, ""))).astype(str)


def collapse_table(curves: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per run (`keys`, e.g. ["beta", "seed"]) of DPO curves with step, loss, accuracy and
    ood_rate: the reference's OOD (step 0), the first checkpoint's, the end's OOD, accuracy and loss, and
    `collapse` (``collapse_reasons``; '' for a run that did not collapse)."""
    curves = curves.sort_values([*keys, "step"])
    start = curves[curves["step"] == 0].groupby(keys).head(1).set_index(keys)
    trained = curves[curves["step"] > 0]
    first, end = trained.groupby(keys).head(1).set_index(keys), trained.groupby(keys).tail(1).set_index(keys)
    table = pd.DataFrame({"reference_ood": start["ood_rate"], "first_ood": first["ood_rate"], "ood": end["ood_rate"],
                          "accuracy": end["accuracy"], "loss": end["loss"]})  # fmt: skip
    table["collapse"] = collapse_reasons(
        table["accuracy"], table["loss"], table["first_ood"], table["ood"], table["reference_ood"]
    )
    return table.reset_index()


NO_COLLAPSE = "the arm's runs do not collapse (core.drift)"  # the precondition's name in a claims table (claims.gated)


COLLAPSED_ARM = 0.5
"""An arm whose runs collapse in more than half the cases (the Wilson interval of the share, over the
seeds behind the runs, above this) is a collapse regime: its drift claims are untestable there."""


def collapse_check(table: pd.DataFrame) -> Check:
    """'The arm's runs do not collapse', from ``collapse_table`` rows with a seed column: the share of
    runs that collapsed, with its Wilson interval over the seeds behind them (``clustered_share_interval``), read against
    COLLAPSED_ARM from below (it holds when the whole interval is ≤ 0.5, fails when it is above)."""
    share = clustered_share_interval(table["collapse"] != "", table["seed"])  # a seed's runs are not independent
    return Check("share of the arm's runs that collapse", share, COLLAPSED_ARM, above=False)


def collapse_summary(table: pd.DataFrame, arm: str) -> str:
    """One plain sentence on what `arm` is, from its ``collapse_table``: how many runs collapsed and why,
    with their end accuracy and loss against chance's 0.5 and log 2."""
    collapsed = table[table["collapse"] != ""]
    if collapsed.empty:
        return (f"{arm}: none of its {len(table)} runs collapsed (end accuracy {table['accuracy'].min():.2f}–"
                f"{table['accuracy'].max():.2f}; no OOD jump at the first checkpoint).")  # fmt: skip
    reasons = "; ".join(f"{n} {why}" for why, n in collapsed["collapse"].value_counts().items())
    return (
        f"{arm}: {len(collapsed)} of its {len(table)} runs collapse rather than drift ({reasons}): end accuracy "
        f"{collapsed['accuracy'].min():.2f}–{collapsed['accuracy'].max():.2f} (chance 0.5), end loss "
        f"{collapsed['loss'].min():.3f}–{collapsed['loss'].max():.3f} (log 2 = {np.log(2):.3f}), "
        f"first-checkpoint OOD {collapsed['first_ood'].min():.0%}–{collapsed['first_ood'].max():.0%}."
    )
