"""The C10 claims row of the likelihood-displacement chapter, decided on intervals over seeds.

A seed sets one tiny LM (its initialisation and its fit to the corpus); every run, step and
pair of that LM is read on it, so the replicates are the seeds: each quantity below is computed
once per seed and summarised over seeds (``core.evidence``, ``claims.decide``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.evidence import Check, Interval, mean_interval

CORRELATION = 0.8  # |Pearson| that counts as "in proportion to"


FLOAT64_NOISE = 1e-9
"""A one-step change of log π(y+) (computed in float64) counts as a fall only below −FLOAT64_NOISE."""
RANK_CORRELATION = 0.5  # −Spearman(⟨W+, W−⟩, Δ log π(y+)) that counts as "grows with"
ANY = 1e-9
"""The claims' "at least one run" (> 0), read on a per-seed share of runs (0, or at least 1/runs):
the share counts as non-zero from ANY on (an interval's ≥ needs a positive bound). The share is
taken per seed and summarised by the mean over seeds, not by a Wilson interval over the pooled
runs, which never excludes a rate of 0 and so could confirm that some run displaces but never
refute it: the mean's interval fails when no seed shows the event, holds when every seed shows
it at a similar rate, and straddles in between."""


def per_run_pearson(geometry: pd.DataFrame, column: str) -> pd.Series:
    """Per run (seed, statement, pair): Pearson(⟨W_z, W_y+ − W_y−⟩, column) over the tokens z."""
    return geometry.groupby(["seed", "statement", "pair"]).apply(
        lambda g: np.corrcoef(g["inner"], g[column])[0, 1], include_groups=False
    )


def mean_sd(values: pd.Series, digits: int = 2, sign: str = "") -> str:
    """'mean ± sd' over seeds (the sd only with two seeds or more)."""
    mean = f"{values.mean():{sign}.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {values.std(ddof=1):.{digits}f}"


CLAIMS = {
    "C10": ClaimText(
        "Single-token DPO lowers log π(y+) when ⟨W_y+, W_y−⟩ is large, and the mass moves to tokens z "
        "in proportion to ⟨W_z, W_y+ − W_y−⟩, which can be tokens of the opposite meaning.",
        "displacement in OLMo-1B, Gemma-2B, Llama-3-8B, some of it catastrophic",
        "talk's table",
    ),
}


def displacement_claims(features: pd.DataFrame, geometry: pd.DataFrame, pairs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The C10 claims table.

    features: ``random_features_study`` rows (the paper's theoretical setting);
    geometry: ``one_step_geometry`` rows of the tiny LM for z ∉ {y+, y−}, with seed, statement
    and pair columns (correlations are taken within each run, their median per seed);
    pairs: one row per (seed, y+, y−) with `inner_pos_neg` = ⟨W_y+, W_y−⟩ and `dlogp_pos`,
    the change of log π(y+) after one step in the LM; table: ``displacement_row`` rows of
    the multi-step runs in the LM, with a seed column. Verdict, on intervals over seeds:
    reproduced if the LM shows all three parts (per seed: the median Pearson ≥ CORRELATION,
    Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) over the seed's pairs ≤ −RANK_CORRELATION, a share of
    catastrophic runs ≥ ANY); partly if the LM displaces at all (per seed, the share of its
    multi-step runs and one-step pairs in which π(y+) fell, ≥ ANY); not reproduced otherwise.
    The unconstrained-features model is reported but never counts: its proportionality holds by
    algebra (an identity is not evidence).
    """
    r_seeds, rank_seeds = _per_seed_correlations(geometry, pairs)
    displaced = Check("share of runs and one-step pairs in which π(y+) fell, per seed", _displaced_seeds(pairs, table), ANY)
    lm_parts = [
        Check("median Pearson(⟨W_z, W_y+ − W_y−⟩, Δ log π(z)) per seed", mean_interval(r_seeds), CORRELATION),
        Check("Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) per seed", mean_interval(rank_seeds), -RANK_CORRELATION, above=False),
        Check("share of catastrophic runs per seed", mean_interval(table.groupby("seed")["is_catastrophic"].mean()), ANY),
    ]
    our_value = _c10_value(features, geometry, pairs, table, r_seeds, rank_seeds)
    return claims_frame([{"claim_id": "C10", "our_value": our_value, **decide(lm_parts, part=displaced)}], text=CLAIMS)


def _per_seed_correlations(geometry: pd.DataFrame, pairs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per seed of the LM: the median over its runs of Pearson(⟨W_z, W_y+ − W_y−⟩, Δ log π(z)), and
    Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) over its pairs; a seed with neither defined gives no value."""
    # a correlation left undefined (a constant change) is skipped, as the pooled median did; a seed
    # with none defined gives no value, and the interval's n says how many seeds did
    r_seeds = per_run_pearson(geometry, "dlogp_lm").groupby(level="seed").median().dropna()
    rank_seeds = (
        pairs.groupby("seed")
        .apply(lambda g: g[["inner_pos_neg", "dlogp_pos"]].corr(method="spearman").iloc[0, 1], include_groups=False)
        .dropna()
    )
    return r_seeds, rank_seeds


def _displaced_seeds(pairs: pd.DataFrame, table: pd.DataFrame) -> Interval:
    """The interval over seeds of "the LM displaces at all": per seed, the share of its multi-step
    runs and one-step pairs in which π(y+) fell."""
    one_step_fell = pairs["dlogp_pos"] < -FLOAT64_NOISE
    # both kinds together: > 0 exactly when either kind shows a fall
    fell = pd.concat([table["displaced"].astype(float), one_step_fell.astype(float)], keys=["runs", "pairs"])
    seeds = pd.concat([table["seed"], pairs["seed"]], keys=["runs", "pairs"])
    return mean_interval(fell.groupby(seeds.to_numpy()).mean())


def _c10_value(
    features: pd.DataFrame,
    geometry: pd.DataFrame,
    pairs: pd.DataFrame,
    table: pd.DataFrame,
    r_seeds: pd.Series,
    rank_seeds: pd.Series,
) -> str:
    """C10's measured values: the tiny LM's per seed and pooled, then the unconstrained-features model's."""
    r_lm_features = float(per_run_pearson(geometry, "dlogp_features").min())
    rank_lm = float(pairs[["inner_pos_neg", "dlogp_pos"]].corr(method="spearman").iloc[0, 1])
    r_features = float(features["z_corr"].min())
    rank_features = float(features[["inner_pos_neg", "dlogp_pos_first_order"]].corr(method="spearman").iloc[0, 1])
    displaced_features = float((features["p_pos_after"] < features["p_pos_before"]).mean())
    one_step_displaced = float((pairs["dlogp_pos"] < -FLOAT64_NOISE).mean())
    return (
        f"tiny LM, {len(r_seeds)} seed{'s' if len(r_seeds) != 1 else ''} (mean ± sd over seeds): "
        f"Pearson(⟨W_z, W_y+ − W_y−⟩, "
        f"Δ log π(z)) after one step, median over each seed's runs {mean_sd(r_seeds)} (its unconstrained-features "
        f"model: ≥ {r_lm_features:.3f}); Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) over each seed's pairs "
        f"{mean_sd(rank_seeds, sign='+')} ({rank_lm:+.2f} over all {len(pairs)} pairs), "
        f"π(y+) fell after one step for {one_step_displaced:.0%} of them; "
        f"multi-step runs (the chapter's optimizer): π(y+) fell in {float(table['displaced'].mean()):.0%}, "
        f"catastrophic in {float(table['is_catastrophic'].mean()):.0%} of {len(table)}. "
        f"Unconstrained features ({len(features)} random instances): Pearson ≥ {r_features:.3f}, "
        f"Spearman {rank_features:+.2f}, π(y+) fell in {displaced_features:.0%}"
    )
