"""Where the probability that leaves y_w and y_l goes: C24 as a mass decomposition, read along the
update axis's runs (issue: Park's drift as a graded effect, item 5).

Park §4.1 proposes that drift is DPO pushing down both answers of a pair while an OOD answer
rises: π(y_OOD) > π(y_w) > π(y_l). Both log-probabilities fall in almost every run that moves,
drifting or not, so their sign does not mark drift. What would: where the mass goes. Per scored
training pair (s, y_w, y_l), every mass exact (``runs.DriftEvaluator``: sequence probabilities of
'y.' and ``exact.response_masses``), between the run's reference and a horizon:

    left      = [π_ref(y_w | s) + π_ref(y_l | s)] − [π(y_w | s) + π(y_l | s)]
    to_ood    = P_π(OOD | s) − P_ref(OOD | s)
    to_window = left − to_ood          (the rest of the in-window answers: the masses sum to 1)

each averaged over the scored pairs. A run's *OOD share* is to_ood / left, defined where at
least LEFT of the reference's pair mass has left (below that there is nothing to divide). The
shares are compared between runs whose greedy OOD rate rose ≥ DRIFT_RISE (drifting) and runs
that did not (calm), of the same task at the same horizon (equal update counts), neither
collapsed nor diverged; per seed, the mean share of its drifting runs minus that of its calm
runs, averaged over the horizons where the seed has both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.drift import DRIFT_RISE

LEFT = 0.05  # an OOD share is read where ≥ 5 % of the reference's pair mass has left y_w and y_l
STRATUM = ["task", "read_epoch"]  # runs are matched within a task and a horizon: equal update counts


def mass_flow(curves: pd.DataFrame, read: pd.DataFrame) -> pd.DataFrame:
    """`read` (``updates.read_along`` rows) with each run's mass decomposition at its horizon,
    from `curves` (the runs' evaluations, with `pair_mass` and `pair_ood_mass`): `left`,
    `to_ood`, `to_window`, `ood_share` (NaN where less than LEFT of the pair mass left) and
    `kind` ('drifting', 'calm', or '' for a collapsed or diverged run)."""
    keys = ["task", "label", "seed"]
    start = curves[curves["step"] == 0].set_index(keys)[["pair_mass", "pair_ood_mass"]]
    rows = []
    for epoch in sorted(read["read_epoch"].unique()):
        upto = curves[curves["epoch"] <= epoch + 1e-9].sort_values([*keys, "step"])
        end = upto.groupby(keys).tail(1).set_index(keys)[["pair_mass", "pair_ood_mass"]]
        flow = pd.DataFrame({"left": start["pair_mass"] - end["pair_mass"],
                             "to_ood": end["pair_ood_mass"] - start["pair_ood_mass"],
                             "reference_pair_mass": start["pair_mass"]})  # fmt: skip
        rows.append(flow.reset_index().assign(read_epoch=epoch))
    out = read.merge(pd.concat(rows, ignore_index=True), on=[*keys, "read_epoch"], how="left")
    out["to_window"] = out["left"] - out["to_ood"]
    enough = out["left"] >= LEFT * out["reference_pair_mass"]
    out["ood_share"] = np.where(enough, out["to_ood"] / out["left"].where(enough, 1.0), np.nan)
    sound = ~out["diverged"] & (out["collapse"] == "")
    out["kind"] = np.where(~sound, "", np.where(out["ood_change"] >= DRIFT_RISE - 1e-12, "drifting", "calm"))
    return out


def share_gap(flows: pd.DataFrame) -> pd.Series:
    """Per seed: the mean OOD share of its drifting runs minus that of its calm runs, within each
    task and horizon where it has both (with a defined share), averaged over those; seeds with no
    such horizon are left out."""
    shares = flows[flows["kind"].isin(["drifting", "calm"]) & flows["ood_share"].notna()]
    by_kind = shares.groupby(["seed", *STRATUM, "kind"])["ood_share"].mean().unstack("kind")
    if not {"drifting", "calm"} <= set(by_kind.columns):
        return pd.Series(dtype=float, name="gap")
    gaps = (by_kind["drifting"] - by_kind["calm"]).dropna()
    return gaps.groupby("seed").mean().rename("gap")


def flow_summary(flows: pd.DataFrame) -> pd.DataFrame:
    """Per task, horizon and kind: runs, the mean pair mass that left, the mean mass gained by OOD
    and by the other in-window answers, and the mean OOD share (over runs with a defined share)."""
    kinds = flows[flows["kind"] != ""]
    grouped = kinds.groupby([*STRATUM, "updates", "kind"])
    return pd.DataFrame({
        "runs": grouped.size(),
        "left": grouped["left"].mean(),
        "to_ood": grouped["to_ood"].mean(),
        "to_window": grouped["to_window"].mean(),
        "ood_share": grouped["ood_share"].mean(),
        "shares": grouped["ood_share"].count(),
    }).reset_index()  # fmt: skip
