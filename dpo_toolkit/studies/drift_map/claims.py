"""Claims C22–C25 of the drift map (C22-full and C25 on its update-count axis), decided on intervals
over independent seeds (``core.evidence``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import EVIDENCE, UNTESTABLE, ClaimText, claims_frame, decide
from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE
from dpo_toolkit.core.evidence import Check, Interval, mean_interval, share_interval

from .analysis import IN_DISTRIBUTION, MOST, NEAR_ZERO, drifting_recipe, is_paper_recipe
from .design import PAPER_RECIPE
from .updates import MANY_EPOCHS, SMALL_LR, corner, largest

ABOUT_80 = 0.6  # C23: "about 80 %" — the drifted runs end at ≥ 60 % OOD on average
SOME = 0.2  # C22 partly: at least one run in five drifts
SPECIFIC = 0.2  # C24: both log-probs fall in ≥ 20 points more of the drifted runs than of the others


def both_fell(changes: pd.DataFrame, chosen: str, rejected: str) -> pd.Series:
    """Whether the mean log π(y_w) and log π(y_l) both fell from the reference, per row."""
    return (changes[chosen] < 0) & (changes[rejected] < 0)


def _unmeasured(name: str, threshold: float, above: bool, replicates: int) -> Check:
    """A check on a quantity these runs do not define (no run to read it on): its interval is
    the whole line, so it never holds or fails; `replicates` is the seeds behind the runs, so
    that ``decide`` still reads the precondition that explains the gap."""
    return Check(name, Interval(replicates, float("nan"), -math.inf, math.inf), threshold, above)


CLAIMS = {
    "C22": ClaimText(
        "Park's DPO recipe for the KL sweep (RMSprop at 5e-5, batch 16, 3 epochs) drives the policy out of distribution.",
        "policy A (β = 0.01) goes OOD (§4.3), the drift §4.2–4.3 study",
    ),
    "C22-full": ClaimText(
        "Park's DPO recipe for the KL sweep (RMSprop at 5e-5, batch 16, 3 epochs) drives the policy out of distribution, "
        "at Park's full data (S = [100, 500]): the update axis's cell read at 3 epochs.",
        "policy A (β = 0.01) goes OOD (§4.3), the drift §4.2–4.3 study",
    ),
    "C23": ClaimText(
        "Somewhere on the map DPO drifts to about 80 % OOD while reward margin and accuracy keep rising.",
        "≈ 80 % OOD, margin and accuracy rising",
        "§4.1",
    ),
    "C24": ClaimText(
        "Where DPO drifts, π(y_OOD) > π(y_w) > π(y_l), with the log-probabilities of both y_w and y_l falling.",
        "the ordering, with both falling",
        "§4.1",
    ),
    "C25": ClaimText(
        "With small adaptive steps (lr ≤ 5e-5) and many updates (≥ 30 epochs), DPO drifts out of distribution "
        "gradually, on Park's §4.1 task (W = 5, S = 1–99).",
        "OOD grows over training to ≈ 80 % while the reward margin and accuracy rise",
        "§4.1, Fig. 1",
    ),
    "C25-kl": ClaimText(
        "With small adaptive steps (lr ≤ 5e-5) and many updates (≥ 30 epochs), DPO drifts out of distribution "
        "gradually, on the KL sweep's task at Park's full size (W = 10, S = [100, 500]).",
        "policy A (β = 0.01) goes OOD",
        "§4.3",
    ),
}
"""What each claim says and what the paper reports; the rows of ``map_claims`` add what the runs show."""
UPDATE_CLAIMS = {"grokking": "C25", "kl_sweep": "C25-kl"}  # the update axis's claim of each task


def map_claims(
    runs: pd.DataFrame, table: pd.DataFrame, mechanisms: pd.DataFrame, confirmation: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Claims C22–C24 from the runs (``outcomes``), the cells (``cell_table``), ``mechanism``, and
    the drifting recipe re-run on fresh seeds (`confirmation`, its ``outcomes``; C23 is decided on
    them when given, since the recipe was picked as the best of many cells on the map's own seeds).

    Every verdict is decided on intervals over independent seeds (``core.evidence``): a seed sets
    the reference, the initialisation and the data order, so the runs of one seed in different
    cells (β, optimizer, …) are not independent. A share of runs (drifted, both log-probs fell,
    rising) gets a Wilson interval whose replicates are the seeds behind those runs."""
    return claims_frame([_c22(runs), _c23(runs, table, confirmation), _c24(runs, mechanisms)], text=CLAIMS)


def _c22(runs: pd.DataFrame) -> dict:
    """C22: the drifted share of the paper recipe's runs in the grid (every β and seed)."""
    return _paper_recipe_drifts("C22", runs[is_paper_recipe(runs)], "the paper's recipe is in the grid")


def _paper_recipe_drifts(claim_id: str, paper: pd.DataFrame, where: str) -> dict:
    """The drifted share of the paper recipe's runs `paper` (``outcomes`` rows, every β and seed), its
    replicates the seeds: reproduced when at least MOST, partly when at least SOME."""
    row = {"claim_id": claim_id, "precondition": f"{where}: {len(paper)} runs"}
    if not len(paper):  # a fact of the design, not of the runs: there is nothing to put an interval on
        return row | {"our_value": "the recipe is not in this map", "verdict": UNTESTABLE}
    by_beta = ", ".join(f"β={b:.3g}: {int(g['drifted'].sum())}/{len(g)}" for b, g in paper.groupby("beta"))
    share = share_interval(int(paper["drifted"].sum()), len(paper), replicates=paper["seed"].nunique())
    name = "share of the paper recipe's runs that drift"
    return row | {
        "our_value": f"{int(paper['drifted'].sum())} of {len(paper)} runs drift ({by_beta}) over "
        f"{paper['seed'].nunique()} seeds; final OOD {100 * paper['ood'].mean():.0f} ± "
        f"{100 * paper['ood'].std(ddof=0):.0f} % from a reference at {100 * paper['reference_ood'].mean():.0f} %; "
        f"{(paper['collapse'] != '').sum()} collapsed",
        **decide(Check(name, share, MOST), part=Check(name, share, SOME)),
    }


def _c23(runs: pd.DataFrame, table: pd.DataFrame, confirmation: pd.DataFrame | None) -> dict:
    """C23: the drifting recipe's runs (the fresh seeds when given) drift, to about 80 % OOD, with
    margin and accuracy rising; its precondition, that their references are in distribution."""
    best, near_zero = drifting_recipe(table)
    fresh = confirmation is not None and len(confirmation) > 0
    mine = confirmation if fresh else runs[runs["label"] == best["label"]]
    drifted_runs = mine[mine["drifted"]]
    n_seeds = mine["seed"].nunique()  # one run per seed: each fresh seed is its own replicate
    fraction = Check("drift fraction", share_interval(len(drifted_runs), len(mine), replicates=n_seeds), MOST)
    # the precondition, measured on the references of the runs that decide (one per seed)
    reference = Check("reference OOD rate", mean_interval(mine["reference_ood"]), IN_DISTRIBUTION, above=False)
    where = f"on {len(mine)} fresh seeds" if fresh else f"on the map's {len(mine)} seeds (no fresh seeds)"
    return {
        "claim_id": "C23",
        "our_value": f"drifting recipe {best['label']} ({best['drifted']}/{best['seeds']} of the map's seeds drift); "
        f"{where}: {len(drifted_runs)}/{len(mine)} drift{_c23_drifted(drifted_runs)}; "
        f"{(table['drift_fraction'] > MOST).sum()} of {len(table)} cells drift in more than half their seeds",
        **decide(_c23_checks(drifted_runs, fraction), part=fraction, precondition=reference),
        "precondition": f"the drifting recipe's reference is ≤ {IN_DISTRIBUTION:.0%} OOD: "
        f"{100 * mine['reference_ood'].mean():.0f} ± {100 * mine['reference_ood'].std(ddof=0):.0f} % over the {n_seeds} "
        f"deciding seeds ({best['reference_ood']:.0%} on the map's)"
        + ("" if near_zero else f" (no cell's reference is ≤ {NEAR_ZERO:.0%} OOD)"),
    }


LEARNED = 0.7  # C23: a drifting run learned the preferences when its held-out accuracy ends ≥ 0.7 …
LEARNED_GAIN = 0.1  # … and ≥ 10 points above its reference's (step 0): Park's drift comes with rising accuracy


def _rose(drifted_runs: pd.DataFrame) -> pd.Series:
    """Per drifted run, whether its margin rose and it learned the preferences (LEARNED, LEARNED_GAIN)."""
    learned = (drifted_runs["accuracy"] >= LEARNED) & (drifted_runs["accuracy"] - drifted_runs["start_accuracy"] >= LEARNED_GAIN)
    return (drifted_runs["margin"] > drifted_runs["first_margin"]) & learned


def _c23_checks(drifted_runs: pd.DataFrame, fraction: Check) -> list[Check]:
    """C23's full claim: the drift fraction, then the OOD level and the rising margin.

    The OOD level and the rising margin are read on the drifted seeds only (one value per
    drifted seed): they join the claim unless the drift fraction already fails it, so that two
    drifted seeds of twenty cannot turn a clear failure into "too few replicates"."""
    if not len(drifted_runs) or fraction.outcome is False:
        return [fraction]
    rose = _rose(drifted_runs)
    return [
        fraction,
        Check("final OOD rate of the drifted runs", mean_interval(drifted_runs["ood"]), ABOUT_80),
        Check(f"share of drifted runs whose margin rose and accuracy ended ≥ {LEARNED:g}, ≥ {LEARNED_GAIN:g} above the start",
              share_interval(int(rose.sum()), len(drifted_runs), replicates=drifted_runs["seed"].nunique()), MOST),
    ]  # fmt: skip


def _c23_drifted(drifted_runs: pd.DataFrame) -> str:
    """', to 69 % OOD on average; margin rose … in 0 % of them' for C23's row ('' when none drifted)."""
    if not len(drifted_runs):
        return ""
    drifted_ood, rising = float(drifted_runs["ood"].mean()), float(_rose(drifted_runs).mean())
    return (f", to {100 * drifted_ood:.0f} % OOD on average; margin rose and accuracy ended ≥ {LEARNED:g} "
            f"(≥ {LEARNED_GAIN:g} above the reference's) in "
            f"{100 * rising:.0f} % of them")  # fmt: skip


def _c24(runs: pd.DataFrame, mechanisms: pd.DataFrame) -> dict:
    """C24: in the drifted runs both log-probs had fallen at the onset of drift, and more often
    than in the runs that did not drift (by the end); its precondition, that some run drifts."""
    n = len(mechanisms)
    onset_fell = both_fell(mechanisms, "onset_chosen_change", "onset_rejected_change") if n else pd.Series(dtype=bool)
    fell = float(onset_fell.mean()) if n else float("nan")
    calm = runs[~runs["drifted"] & ~runs["diverged"] & (runs["collapse"] == "")]  # a collapse is neither
    calm_fell = float(both_fell(calm, "chosen_change", "rejected_change").mean()) if len(calm) else float("nan")
    ordering = mechanisms["onset_ordering"].dropna() if n else pd.Series(dtype=float)
    fell_name = "share of drifted runs in which both log-probs fell at the onset"
    if n:
        fell_check = Check(fell_name, share_interval(int(onset_fell.sum()), n, replicates=mechanisms["seed"].nunique()), MOST)
    else:
        fell_check = _unmeasured(fell_name, MOST, True, runs["seed"].nunique())
    full = [fell_check] + ([_specificity(mechanisms, onset_fell, calm)] if n and len(calm) else [])
    c24 = {
        "claim_id": "C24",
        "our_value": f"both mean log-probs had fallen at the onset of drift in {100 * fell:.0f} % of {n} drifted runs, "
        f"and by the end in {100 * calm_fell:.0f} % of {len(calm)} runs that did not drift; the ordering held for most "
        f"training pairs with an OOD greedy answer in {100 * (ordering > MOST).mean() if len(ordering) else 0:.0f} % of "
        f"the {len(ordering)} drifted runs that had such pairs",
        **decide(full, part=fell_check, precondition=n > 0),
        "precondition": f"at least one run drifts: {n}",
    }
    if not n:  # no onset to read: the row says so instead of an interval over nothing
        why = f"{c24['verdict']}: no run drifts in {runs['seed'].nunique()} seeds, so there is no onset to read"
        c24 |= {**dict.fromkeys(EVIDENCE, ""), "decision": why}
    return c24


def _specificity(mechanisms: pd.DataFrame, onset_fell: pd.Series, calm: pd.DataFrame) -> Check:
    """C24's specificity per seed: the share of the seed's drifted runs whose log-probs both fell
    at the onset minus the share of its runs that did not drift whose log-probs both fell by the
    end, over the seeds that have both kinds of run."""
    by_seed = pd.DataFrame(
        {
            "drifted": onset_fell.groupby(mechanisms["seed"]).mean(),
            "calm": both_fell(calm, "chosen_change", "rejected_change").groupby(calm["seed"]).mean(),
        }
    ).dropna()
    name = "drifted-minus-calm share with both log-probs falling, per seed"
    gap = by_seed["drifted"] - by_seed["calm"]
    return Check(name, mean_interval(gap), SPECIFIC) if len(gap) else _unmeasured(name, SPECIFIC, True, 0)


def update_claims(read: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The update axis's claims from ``updates.read_along`` rows (`read`) and ``updates.update_cells``
    (`cells`): C22-full (Park's recipe at Park's full data: rmsprop 5e-5, batch 16, read at 3 epochs
    on the KL sweep's task) when that task was run, and C25 / C25-kl for each task run."""
    rows = []
    if (read["task"] == "kl_sweep").any():
        full = read[(read["task"] == "kl_sweep") & (read["read_epoch"] == PAPER_RECIPE["epochs"])]
        paper = full[(full["optimizer"] == PAPER_RECIPE["optimizer"]) & np.isclose(full["lr"], PAPER_RECIPE["lr"])
                     & (full["batch_size"] == PAPER_RECIPE["batch_size"])]  # fmt: skip
        rows.append(_paper_recipe_drifts("C22-full", paper, "the paper's recipe is on the update axis of the KL sweep's task"))
    rows += [_graded(read[read["task"] == task], cells[cells["task"] == task], UPDATE_CLAIMS[task])
             for task in UPDATE_CLAIMS if (read["task"] == task).any()]  # fmt: skip
    return claims_frame(rows, text=CLAIMS)


def _graded(read: pd.DataFrame, cells: pd.DataFrame, claim_id: str) -> dict:
    """C25 on one task: in the small-step, many-update corner (``updates.corner``, outside a collapse
    regime), the largest cell-mean rise of the OOD rate, with a simultaneous interval over the
    corner's cells (``updates.largest``), read against DRIFT_RISE (partly: a graded rise), and the
    largest cell-mean final OOD rate against DRIFT_OOD (reproduced: the rise reaches the drift rule).
    The two maxima may sit in different cells; the row names both."""
    mine = corner(cells)
    n_seeds = read["seed"].nunique()
    row = {"claim_id": claim_id, "precondition": f"cells with lr ≤ {SMALL_LR:g} read at ≥ {MANY_EPOCHS} epochs, "
           f"outside a collapse regime: {len(mine)} (recipe, horizon) cells"}  # fmt: skip
    if mine.empty:
        why = "the update axis has no small-step, many-update cell outside a collapse regime"
        return row | {"our_value": why, "verdict": UNTESTABLE}
    rise, rise_at = largest(read, mine, "ood_change")
    level, level_at = largest(read, mine, "ood")
    rise_check = Check(f"largest mean OOD-rate rise over the corner's {len(mine)} cells (simultaneous 95 %)", rise, DRIFT_RISE)
    level_check = Check(f"largest mean OOD rate over the corner's {len(mine)} cells (simultaneous 95 %)", level, DRIFT_OOD)
    return row | {
        "our_value": f"largest rise {100 * rise.estimate:+.0f} points ({rise_at}); largest OOD rate "
        f"{100 * level.estimate:.0f} % ({level_at}); references {100 * read['reference_ood'].mean():.0f} % OOD "
        f"(exact mass {100 * read['reference_ood_mass'].mean():.0f} %) over {n_seeds} seeds",
        **decide([rise_check, level_check], part=rise_check),
    }
