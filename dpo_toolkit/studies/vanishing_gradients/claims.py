"""The C14–C16 claims table of the vanishing-gradients chapter, with its thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.evidence import Check, mean_interval
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


def envelope_slope(train: pd.DataFrame) -> tuple[float, float]:
    """(log-log slope of ``envelope(train)``, decades of std its populated bins span): the exponent
    C14 tests and the range it is measured over. (NaN, 0) without two populated bins."""
    if not ((train["std"] > 0) & (train["grad_norm"] > 0)).any():
        return float("nan"), 0.0
    env = envelope(train)
    slope = float(np.polyfit(env["log10_std"], env["log10_grad"], 1)[0]) if len(env) >= 2 else float("nan")
    decades = float(env["log10_std"].max() - env["log10_std"].min()) if len(env) else 0.0
    return slope, decades


CLAIMS = {
    "C14": ClaimText(
        "‖∇V_x‖ is bounded by C · std(r)^(2/3): the gradient vanishes with the reward std.", "‖∇V_x‖ = O(std^(2/3))"
    ),
    "C15": ClaimText(
        "RL fine-tuning barely improves inputs with small reward std and low reward.",
        "small-std, low-reward inputs are common and barely improve",
    ),
    "C16": ClaimText(
        "A short SFT phase (1 % of labels, 40 % of steps) removes the problem, reaching about the reward of full SFT.",
        "cheap SFT ≈ full SFT reward after RFT",
    ),
}


def vanishing_claims(curves: pd.DataFrame, inputs: pd.DataFrame) -> pd.DataFrame:
    """The C14–C16 claims table from ``run_vanishing_gradients`` (any number of seeds).

    Every deciding quantity is computed once per seed (a seed is one replicate: its initialisation,
    batch orders and small-SFT labels; the three arms of one seed share them) and read as the 95 %
    interval of its mean over seeds (``core.evidence``); fewer than three seeds decide nothing."""
    n_seeds = curves["seed"].nunique()
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    return claims_frame([_c14(inputs, seeds), _c15(inputs, seeds), _c16(curves, seeds)], text=CLAIMS)


def _pm(s: pd.Series, fmt: str = ".2f") -> str:
    """Mean ± sd over seeds (the value alone for one seed; 'undefined' for none)."""
    if not s.count():
        return "undefined"
    return f"{s.mean():{fmt}} ± {s.std(ddof=1):{fmt}}" if s.count() > 1 else f"{s.mean():{fmt}}"


def _c14(inputs: pd.DataFrame, seeds: str) -> dict:
    """C14's row: the log-log slope of the gradient envelope per seed, against the bound's exponent."""
    train = inputs[inputs["split"] == "train"]
    positive = train[train["std"] > 0]
    ratio = positive["grad_norm"] / positive["std"] ** BOUND_EXPONENT
    # The exponent and its range of std per seed: the envelope of one seed's (arm, input, checkpoint)
    # cases, not of every seed pooled (a pooled envelope takes the largest gradient over replicates,
    # and its span of std, a single number, flipped across MIN_DECADES between CPUs).
    bound = pd.DataFrame([envelope_slope(g) for _, g in train.groupby("seed")], columns=["slope", "decades"])
    # Constant-free: the theorem's constant (Razin et al., Thm. 1) could not be read from the sources
    # reachable here (the talk states O(std^(2/3)) only), so the exponent is what is tested.
    # partly: the gradient vanishes at least half as fast as the bound says (a positive slope alone
    # is close to implied: ∇V_x → 0 as std → 0 anyway)
    slopes = mean_interval(bound["slope"])
    c14 = decide(
        Check("log-log slope of the gradient envelope", slopes, BOUND_EXPONENT - SLOPE_TOLERANCE),
        part=Check("log-log slope of the gradient envelope", slopes, BOUND_EXPONENT / 2),
        precondition=Check("decades of std the envelope spans", mean_interval(bound["decades"]), MIN_DECADES),
    )
    return {
        "claim_id": "C14",
        "our_value": f"constant-free check (the theorem's constant could not be read here): log-log slope of the "
        f"envelope {_pm(bound['slope'])} over {_pm(bound['decades'], '.1f')} decades of std (mean ± sd over "
        f"{seeds}); largest ‖∇V_x‖ / std^(2/3) = {ratio.max():.3g} over {len(positive)} "
        f"(input, checkpoint) cases (a fitted C, reported, not tested)",
        **c14,
        "precondition": f"the envelope's populated bins of reward std span ≥ {MIN_DECADES:g} decades (per seed, "
        f"read on the interval of their mean): {_pm(bound['decades'], '.1f')}",
    }


def _c15(inputs: pd.DataFrame, seeds: str) -> dict:
    """C15's row: the gain of small-std low-reward inputs against that of the larger-std ones, per seed."""
    stall = stall_table(inputs)
    low = stall[stall["low"]]
    stalled, others = low[low["small_low"]], low[~low["small_low"]]
    per_seed = pd.DataFrame(
        {
            "stalled": stalled.groupby("seed")["gain"].mean(),
            "others": others.groupby("seed")["gain"].mean(),
        },
        index=pd.Index(sorted(inputs["seed"].unique()), name="seed"),
    )
    # a ratio to a gain ≤ 0 says nothing about stalling: a seed without both groups, or whose
    # larger-std inputs do not improve, has no ratio
    gain_ratio = (per_seed["stalled"] / per_seed["others"]).where(per_seed["others"] > 0)
    # precondition: the larger-std inputs improve, on the interval of their mean gain per seed. A
    # seed without a ratio is not a failed precondition (whether a seed has one moves with the float
    # order): its missing value opens the ratio's interval, so the claim is undecided, not untestable;
    # only where no seed has one is it untestable
    improve = Check("mean gain of larger-std low-reward inputs", mean_interval(per_seed["others"]), 0.0)
    ratios = mean_interval(gain_ratio)
    c15 = decide(
        Check("gain of small-std over larger-std low-reward inputs", ratios, STALL_RATIO, above=False),
        part=Check("gain of small-std over larger-std low-reward inputs", ratios, 2 * STALL_RATIO, above=False),
        # no seed with a ratio at all (no small-std input anywhere): nothing to test
        precondition=improve if gain_ratio.notna().any() or improve.outcome is False else False,
    )
    return {
        "claim_id": "C15",
        "our_value": f"low-reward training inputs at the start of RFT (all arms, {seeds}): "
        f"{len(stalled)} with small std gain {stalled['gain'].mean():.3f} on average, "
        f"{len(others)} with larger std gain {others['gain'].mean():.3f}; their ratio per seed "
        f"{_pm(gain_ratio)} (mean ± sd)",
        **c15,
        "precondition": "low-reward training inputs with small std and with larger std in every seed, the latter "
        f"improving (their mean gain per seed read on its interval): {len(stalled)} and {len(others)} "
        f"(mean gain {others['gain'].mean():+.3f}; {int(gain_ratio.notna().sum())} of {len(per_seed)} seeds have "
        "both, the latter improving)",
    }


def _c16(curves: pd.DataFrame, seeds: str) -> dict:
    """C16's row: the final training reward after small SFT against full SFT and no SFT, per seed."""
    final = curves[curves["step"] == curves["step"].max()].pivot_table(index="seed", columns="arm", values="reward_train")
    start = curves[curves["step"] == 0].groupby("arm")["small_std_low_reward"].mean()
    end = curves[curves["step"] == curves["step"].max()].groupby("arm")["small_std_low_reward"].mean()
    beats = Check("reward after small SFT − after no SFT", mean_interval(final["small SFT"] - final["no SFT"]), 0.0)
    c16 = decide(
        [Check("reward after small SFT / after full SFT", mean_interval(final["small SFT"] / final["full SFT"]), FIX_SHARE),
         beats],
        part=beats,
    )  # fmt: skip
    arms = "; ".join(
        f"{arm}: reward {_pm(final[arm], '.3f')}, small-std low-reward inputs {start[arm]:.0f} → {end[arm]:.0f}" for arm in ARMS
    )
    return {"claim_id": "C16", "our_value": f"final training reward after RFT, mean ± sd over {seeds}: {arms}", **c16}
