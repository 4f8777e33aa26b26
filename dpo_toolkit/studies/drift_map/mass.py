"""Where the probability that leaves y_w and y_l goes: C24 as a mass decomposition, read along the
update axis's runs (issue: Park's drift as a graded effect, item 5).

Park §4.1 proposes that drift is DPO pushing down both answers of a pair while an OOD answer
rises: π(y_OOD) > π(y_w) > π(y_l). Both log-probabilities fall in almost every run that moves,
drifting or not, so their sign does not mark drift. What would: where the mass goes. In Park's data
every in-window answer of a prompt is the y_w or the y_l of some pair of it, so per scored training
prompt s, between the run's reference and a horizon (``runs.DriftEvaluator``, every mass exact):

    left      = Σ_a (π_ref(a | s) − π(a | s))⁺      what the answers that fell lost (a in [s − W, s + W])
    to_window = Σ_a (π(a | s) − π_ref(a | s))⁺      what the in-window answers that rose gained
    to_ood    = P_π(OOD | s) − P_ref(OOD | s)

each a mean over the prompts; the rest, left − to_window − to_ood, went to other spellings of
in-window answers ('07'). A net account (the window's mass against the OOD mass) would be an
identity; the gross one tells a policy that moves mass *within* the window (onto the answer nearest
s, say) from one that sends it out. A run's *OOD share* is the share of the moving probability that
landed on OOD answers rather than on the in-window answers that rose, to_ood⁺ / (to_ood⁺ + to_window),
in [0, 1] (0 where the OOD mass fell: then it fed the window), read where at least LEFT has left.
The shares are compared between runs whose greedy OOD rate rose ≥ DRIFT_RISE (drifting)
and runs that did not (calm), of the same task at the same horizon (equal update counts), neither
collapsed nor diverged; per seed, the mean share of its drifting runs minus that of its calm runs,
averaged over the horizons where the seed has both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.drift import DRIFT_RISE

LEFT = 0.01  # an OOD share is read where the falling in-window answers lost ≥ 0.01 of probability per prompt
STRATUM = ["task", "read_epoch"]  # runs are matched within a task and a horizon: equal update counts


def mass_flow(curves: pd.DataFrame, read: pd.DataFrame) -> pd.DataFrame:
    """`read` (``updates.read_along`` rows) with each run's mass decomposition at its horizon, from
    `curves` (the runs' evaluations, with `window_lost`, `window_gained` and `train_ood_mass`):
    `left`, `to_window`, `to_ood`, `to_spellings` (the rest), `ood_share` (NaN where less than LEFT
    left) and `kind` ('drifting', 'calm', or '' for a collapsed or diverged run)."""
    keys = ["task", "label", "seed"]
    start = curves[curves["step"] == 0].set_index(keys)["train_ood_mass"]
    rows = []
    for epoch in sorted(read["read_epoch"].unique()):
        upto = curves[curves["epoch"] <= epoch + 1e-9].sort_values([*keys, "step"])
        end = upto.groupby(keys).tail(1).set_index(keys)
        flow = pd.DataFrame({"left": end["window_lost"], "to_window": end["window_gained"],
                             "to_ood": end["train_ood_mass"] - start})  # fmt: skip
        rows.append(flow.reset_index().assign(read_epoch=epoch))
    out = read.merge(pd.concat(rows, ignore_index=True), on=[*keys, "read_epoch"], how="left")
    out["to_spellings"] = out["left"] - out["to_window"] - out["to_ood"]
    enough = out["left"] >= LEFT
    landed = out["to_ood"].clip(lower=0.0)
    out["ood_share"] = np.where(enough, landed / (landed + out["to_window"]).where(enough, 1.0).clip(lower=1e-300), np.nan)
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
    """Per task, horizon and kind: runs, the mean probability the falling in-window answers lost, the
    mean gained by the rising ones and by OOD answers, and the mean OOD share (over runs with one)."""
    kinds = flows[flows["kind"] != ""]
    grouped = kinds.groupby([*STRATUM, "updates", "kind"])
    return pd.DataFrame({
        "runs": grouped.size(),
        "left": grouped["left"].mean(),
        "to_window": grouped["to_window"].mean(),
        "to_ood": grouped["to_ood"].mean(),
        "ood_share": grouped["ood_share"].mean(),
        "shares": grouped["ood_share"].count(),
    }).reset_index()  # fmt: skip
