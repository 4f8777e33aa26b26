"""The C14–C16 claims table of the vanishing-gradients chapter, with its thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import claims_frame, verdict
from dpo_toolkit.studies.vanishing_gradients.study import ARMS, LOW_REWARD, SMALL_STD

BOUND_EXPONENT = 2 / 3


SLOPE_TOLERANCE = 0.1  # C14: the envelope's log-log slope may fall this far below 2/3


MIN_DECADES = 2.0
"""C14's precondition: the reward stds of the (input, checkpoint) cases span at least this many
decades, so that the envelope's log-log slope (the exponent) can be measured at all."""


STALL_RATIO = 0.25  # C15: small-std, low-reward inputs gain at most this share of the others' gain


FIX_SHARE = 0.9  # C16: the small SFT reaches at least this share of full SFT's final reward


def envelope(inputs: pd.DataFrame, per_decade: int = 2, min_points: int = 5) -> pd.DataFrame:
    """The largest ‖∇V_x‖ in bins of log10 std (per_decade bins per decade), over bins with
    ≥ min_points inputs of positive std. Columns: log10_std (bin centre), log10_grad, n."""
    data = inputs[(inputs["std"] > 0) & inputs["grad_norm"].notna() & (inputs["grad_norm"] > 0)]
    log_std = np.log10(data["std"].to_numpy())
    edges = np.floor(log_std.min() * per_decade) / per_decade
    bins = np.floor((log_std - edges) * per_decade)
    df = pd.DataFrame({"bin": bins, "log10_grad": np.log10(data["grad_norm"].to_numpy())})
    grouped = df.groupby("bin").agg(log10_grad=("log10_grad", "max"), n=("log10_grad", "size")).reset_index()
    grouped["log10_std"] = edges + (grouped["bin"] + 0.5) / per_decade
    return grouped[grouped["n"] >= min_points][["log10_std", "log10_grad", "n"]].reset_index(drop=True)


def stall_table(inputs: pd.DataFrame) -> pd.DataFrame:
    """Per arm, seed and training prompt: the value and std when RL fine-tuning began, the
    gain V_final − V_initial, and flags `low` (initial V < LOW_REWARD) and `small_low`
    (also initial std < SMALL_STD)."""
    rows = inputs[inputs["split"] == "train"]
    keys = ["arm", "seed", "prompt"]
    first = rows[rows["step"] == rows["step"].min()].set_index(keys)
    last = rows[rows["step"] == rows["step"].max()].set_index(keys)
    table = first[["value", "std", "hard"]].rename(columns={"value": "initial_value", "std": "initial_std"})
    table["gain"] = last["value"] - first["value"]
    table["low"] = table["initial_value"] < LOW_REWARD
    table["small_low"] = table["low"] & (table["initial_std"] < SMALL_STD)
    return table.reset_index()


def vanishing_claims(curves: pd.DataFrame, inputs: pd.DataFrame) -> pd.DataFrame:
    """The C14–C16 claims table from ``run_vanishing_gradients`` (any number of seeds)."""
    train = inputs[inputs["split"] == "train"]
    positive = train[train["std"] > 0]
    ratio = positive["grad_norm"] / positive["std"] ** BOUND_EXPONENT
    env = envelope(train)
    slope = float(np.polyfit(env["log10_std"], env["log10_grad"], 1)[0]) if len(env) >= 2 else float("nan")
    decades = float(env["log10_std"].max() - env["log10_std"].min()) if len(env) else 0.0
    # Constant-free: the theorem's constant (Razin et al., Thm. 1) could not be read from the sources
    # reachable here (the talk states O(std^(2/3)) only), so the exponent is what is tested.
    # partly: the gradient vanishes at least half as fast as the bound says (a positive slope alone
    # is close to implied: ∇V_x → 0 as std → 0 anyway)
    c14 = verdict(
        slope >= BOUND_EXPONENT - SLOPE_TOLERANCE,
        slope >= BOUND_EXPONENT / 2,
        testable=decades >= MIN_DECADES and len(env) >= 2,
    )

    stall = stall_table(inputs)
    low = stall[stall["low"]]
    stalled, others = low[low["small_low"]], low[~low["small_low"]]
    comparable = bool(len(stalled) and len(others)) and others["gain"].mean() > 0
    gain_ratio = stalled["gain"].mean() / others["gain"].mean() if comparable else float("nan")
    # precondition: small-std and larger-std low-reward inputs both exist, and the latter improve
    # (a ratio to a gain ≤ 0 says nothing about stalling)
    c15 = verdict(gain_ratio <= STALL_RATIO, gain_ratio <= 2 * STALL_RATIO, testable=comparable)

    final = curves[curves["step"] == curves["step"].max()].groupby("arm")["reward_train"]
    start = curves[curves["step"] == 0].groupby("arm")["small_std_low_reward"].mean()
    end = curves[curves["step"] == curves["step"].max()].groupby("arm")["small_std_low_reward"].mean()
    reward, spread = final.mean(), final.std(ddof=0)
    fixed = reward["small SFT"] >= FIX_SHARE * reward["full SFT"] and reward["small SFT"] > reward["no SFT"]
    c16 = verdict(fixed, reward["small SFT"] > reward["no SFT"])

    n_seeds = curves["seed"].nunique()
    arms = "; ".join(
        f"{arm}: reward {reward[arm]:.3f} ± {spread[arm]:.3f}, small-std low-reward inputs {start[arm]:.0f} → {end[arm]:.0f}"
        for arm in ARMS
    )
    return claims_frame(
        [
            {
                "claim_id": "C14",
                "statement": "‖∇V_x‖ is bounded by C · std(r)^(2/3): the gradient vanishes with the reward std.",
                "paper_value": "‖∇V_x‖ = O(std^(2/3))",
                "our_value": f"constant-free check (the theorem's constant could not be read here): log-log slope of the "
                f"envelope {slope:.2f} over {decades:.1f} decades of std; largest ‖∇V_x‖ / std^(2/3) = {ratio.max():.3g} "
                f"over {len(positive)} (input, checkpoint) cases (a fitted C, reported, not tested)",
                "verdict": c14,
                "precondition": f"the envelope's populated bins of reward std span ≥ {MIN_DECADES:g} decades: {decades:.1f}",
            },
            {
                "claim_id": "C15",
                "statement": "RL fine-tuning barely improves inputs with small reward std and low reward.",
                "paper_value": "small-std, low-reward inputs are common and barely improve",
                "our_value": f"low-reward training inputs at the start of RFT (all arms, {n_seeds} seeds): "
                f"{len(stalled)} with small std gain {stalled['gain'].mean():.3f} on average, "
                f"{len(others)} with larger std gain {others['gain'].mean():.3f} (ratio {gain_ratio:.2f})",
                "verdict": c15,
                "precondition": "low-reward training inputs with small std and with larger std, the latter improving: "
                f"{len(stalled)} and {len(others)} (mean gain {others['gain'].mean():+.3f})",
            },
            {
                "claim_id": "C16",
                "statement": "A short SFT phase (1 % of labels, 40 % of steps) removes the problem, "
                "reaching about the reward of full SFT.",
                "paper_value": "cheap SFT ≈ full SFT reward after RFT",
                "our_value": f"final training reward after RFT, mean ± sd over {n_seeds} seeds: {arms}",
                "verdict": c16,
            },
        ]
    )
