"""Claims C22–C25 of the drift map (C22-full and C25 on its update-count axis), decided on intervals
over independent seeds (``core.evidence``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import UNTESTABLE, ClaimText, claims_frame, decide, gated
from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE, NO_COLLAPSE, collapse_check
from dpo_toolkit.core.evidence import Check, clustered_share_interval, mean_interval, share_interval

from .analysis import IN_DISTRIBUTION, MOST, NEAR_ZERO, drifting_recipe, is_paper_recipe
from .design import PAPER_RECIPE
from .mass import LEFT, share_gap
from .updates import LEARNED, MANY_EPOCHS, SMALL_LR, corner, largest

ABOUT_80 = 0.6  # C23: "about 80 %" — the drifted runs end at ≥ 60 % OOD on average
SOME = 0.2  # C22 partly: at least one run in five drifts
SEPARATES = 0.2  # C24: the OOD share of the mass leaving y_w, y_l is ≥ 20 points larger in drifting runs than in calm ones


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
        "Where DPO drifts, the probability that leaves y_w and y_l goes to OOD answers (π(y_OOD) > π(y_w) > π(y_l), "
        "both falling): a larger share of it than where DPO does not drift, at equal update counts.",
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


def map_claims(runs: pd.DataFrame, table: pd.DataFrame, confirmation: pd.DataFrame | None = None) -> pd.DataFrame:
    """Claims C22 and C23 from the runs (``outcomes``), the cells (``cell_table``), and
    the drifting recipe re-run on fresh seeds (`confirmation`, its ``outcomes``; C23 is decided on
    them when given, since the recipe was picked as the best of many cells on the map's own seeds).

    Every verdict is decided on intervals over independent seeds (``core.evidence``): a seed sets
    the reference, the initialisation and the data order, so the runs of one seed in different
    cells (β, optimizer, …) are not independent. A share of runs with several per seed (C22's runs, one
    per β) gets the Wilson interval at the effective number of runs their correlation within seeds
    allows (``clustered_share_interval``); a share of one run per seed (C23's), the plain Wilson interval.
    C23 also needs the runs that decide it not to collapse (``core.drift.collapse_check``): a recipe that
    breaks most of them is a collapse, untestable for drift, not a failure to drift."""
    c23, deciding = _c23(runs, table, confirmation)
    c23 = gated(claims_frame([c23], text=CLAIMS), collapse_check(deciding), NO_COLLAPSE)
    return pd.concat([claims_frame([_c22(runs)], text=CLAIMS), c23], ignore_index=True)


def _c22(runs: pd.DataFrame) -> dict:
    """C22: the drifted share of the paper recipe's runs in the grid (every β and seed)."""
    return _paper_recipe_drifts("C22", runs[is_paper_recipe(runs)], "the paper's recipe is in the grid")


def _paper_recipe_drifts(claim_id: str, paper: pd.DataFrame, where: str) -> dict:
    """The drifted share of the paper recipe's runs `paper` (``outcomes`` rows, every β and seed), its
    replicates the seeds (``clustered_share_interval``): reproduced when at least MOST, partly when at least SOME."""
    row = {"claim_id": claim_id, "precondition": f"{where}: {len(paper)} runs"}
    if not len(paper):  # a fact of the design, not of the runs: there is nothing to put an interval on
        return row | {"our_value": "the recipe is not in this map", "verdict": UNTESTABLE}
    by_beta = ", ".join(f"β={b:.3g}: {int(g['drifted'].sum())}/{len(g)}" for b, g in paper.groupby("beta"))
    share = clustered_share_interval(paper["drifted"], paper["seed"])  # a seed's runs (one per β) are not independent
    name = "share of the paper recipe's runs that drift"
    return row | {
        "our_value": f"{int(paper['drifted'].sum())} of {len(paper)} runs drift ({by_beta}) over "
        f"{paper['seed'].nunique()} seeds; final OOD {100 * paper['ood'].mean():.0f} ± "
        f"{100 * paper['ood'].std(ddof=0):.0f} % from a reference at {100 * paper['reference_ood'].mean():.0f} %; "
        f"{(paper['collapse'] != '').sum()} collapsed",
        **decide(Check(name, share, MOST), part=Check(name, share, SOME)),
    }


def _c23(runs: pd.DataFrame, table: pd.DataFrame, confirmation: pd.DataFrame | None) -> tuple[dict, pd.DataFrame]:
    """C23: the drifting recipe's runs (the fresh seeds when given) drift, to about 80 % OOD, with
    margin and accuracy rising; its precondition, that their references are in distribution.
    Returns the row and the runs that decide it."""
    best, near_zero = drifting_recipe(table)
    fresh = confirmation is not None and len(confirmation) > 0
    mine = confirmation if fresh else runs[runs["label"] == best["label"]]
    drifted_runs = mine[mine["drifted"]]
    n_seeds = mine["seed"].nunique()  # one run per seed: each fresh seed is its own replicate
    fraction = Check("drift fraction", share_interval(len(drifted_runs), len(mine), replicates=n_seeds), MOST)
    # the precondition, measured on the references of the runs that decide (one per seed)
    reference = Check("reference OOD rate", mean_interval(mine["reference_ood"]), IN_DISTRIBUTION, above=False)
    where = f"on {len(mine)} fresh seeds" if fresh else f"on the map's {len(mine)} seeds (no fresh seeds)"
    row = {
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
    return row, mine


# C23: a drifted run learned the preferences when its accuracy ends ≥ LEARNED and ≥ 10 points above
LEARNED_GAIN = 0.1  # its first checkpoint's: Park's drift comes with rising accuracy.
# Not above step 0's: there the policy is its reference, every margin is 0 and Park §3.4's accuracy (ties
# count as wrong) reads 0, so a gain over it would hold for any run that learns anything.


def _rose(drifted_runs: pd.DataFrame) -> pd.Series:
    """Per drifted run, whether its margin rose and it learned the preferences (LEARNED, LEARNED_GAIN)."""
    learned = (drifted_runs["accuracy"] >= LEARNED) & (drifted_runs["accuracy"] - drifted_runs["first_accuracy"] >= LEARNED_GAIN)
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
        Check(f"share of drifted runs whose margin rose and accuracy ended ≥ {LEARNED:g}, +{LEARNED_GAIN:g} on checkpoint 1",
              share_interval(int(rose.sum()), len(drifted_runs), replicates=drifted_runs["seed"].nunique()), MOST),
    ]  # fmt: skip


def _c23_drifted(drifted_runs: pd.DataFrame) -> str:
    """', to 69 % OOD on average; margin rose … in 0 % of them' for C23's row ('' when none drifted)."""
    if not len(drifted_runs):
        return ""
    drifted_ood, rising = float(drifted_runs["ood"].mean()), float(_rose(drifted_runs).mean())
    return (f", to {100 * drifted_ood:.0f} % OOD on average; margin rose and accuracy ended ≥ {LEARNED:g} "
            f"(≥ {LEARNED_GAIN:g} above the first checkpoint's) in "
            f"{100 * rising:.0f} % of them")  # fmt: skip


def update_claims(read: pd.DataFrame, cells: pd.DataFrame, flows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The update axis's claims from ``updates.read_along`` rows (`read`) and ``updates.update_cells``
    (`cells`): C22-full (Park's recipe at Park's full data: rmsprop 5e-5, batch 16, read at 3 epochs
    on the KL sweep's task) when that task was run, C25 / C25-kl for each task run, and C24 from
    ``mass.mass_flow`` (`flows`) when given."""
    rows = []
    if (read["task"] == "kl_sweep").any():
        full = read[(read["task"] == "kl_sweep") & (read["read_epoch"] == PAPER_RECIPE["epochs"])]
        paper = full[(full["optimizer"] == PAPER_RECIPE["optimizer"]) & np.isclose(full["lr"], PAPER_RECIPE["lr"])
                     & (full["batch_size"] == PAPER_RECIPE["batch_size"])]  # fmt: skip
        rows.append(_paper_recipe_drifts("C22-full", paper, "the paper's recipe is on the update axis of the KL sweep's task"))
    rows += [_graded(read[read["task"] == task], cells[cells["task"] == task], UPDATE_CLAIMS[task])
             for task in UPDATE_CLAIMS if (read["task"] == task).any()]  # fmt: skip
    if flows is not None:
        rows.append(_c24(flows))
    return claims_frame(rows, text=CLAIMS)


def _c24(flows: pd.DataFrame) -> dict:
    """C24: per seed, the OOD share of the probability the falling y_w and y_l lost in its drifting runs minus
    that in its calm runs at equal update counts (``mass.share_gap``), read against SEPARATES; its
    precondition, that some seed has both kinds of run at one horizon."""
    gap = share_gap(flows)
    kinds = flows[flows["kind"] != ""].groupby("kind")["ood_share"]
    share = {k: f"{100 * kinds.mean().get(k, float('nan')):.0f} % in {kinds.count().get(k, 0)} {k} runs"
             for k in ("drifting", "calm")}  # fmt: skip
    row = {"claim_id": "C24", "precondition": f"seeds with drifting and calm runs at one horizon: {len(gap)}",
           "our_value": f"of the probability that moved off the falling y_w and y_l, the share that landed OOD (not on rising "
           f"in-window answers): {share['drifting']}, {share['calm']} (runs that lost ≥ {LEFT:g} per prompt)"}  # fmt: skip
    if not len(gap):
        why = "no seed has both a drifting and a calm run at one horizon"
        return row | {"our_value": f"{row['our_value']}; {why}", "verdict": UNTESTABLE}
    name = "per-seed OOD share in drifting minus calm runs, at equal update counts"
    return row | decide(Check(name, mean_interval(gap), SEPARATES))


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
