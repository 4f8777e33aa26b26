"""The C10 claims row of the likelihood-displacement chapter."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import claims_frame, verdict

CORRELATION = 0.8  # |Pearson| that counts as "in proportion to"


FLOAT64_NOISE = 1e-9
"""A one-step change of log π(y+) (computed in float64) counts as a fall only below −FLOAT64_NOISE."""
RANK_CORRELATION = 0.5  # −Spearman(⟨W+, W−⟩, Δ log π(y+)) that counts as "grows with"


def displacement_claims(features: pd.DataFrame, geometry: pd.DataFrame, pairs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The C10 claims table.

    features: ``random_features_study`` rows (the paper's theoretical setting);
    geometry: ``one_step_geometry`` rows of the tiny LM for z ∉ {y+, y−}, with seed, statement
    and pair columns (correlations are taken within each run, then summarised);
    pairs: one row per (seed, y+, y−) with `inner_pos_neg` = ⟨W_y+, W_y−⟩ and `dlogp_pos`,
    the change of log π(y+) after one step in the LM; table: ``displacement_row`` rows of
    the multi-step runs in the LM. Verdict: reproduced if the LM shows all three parts
    (proportional mass shift, displacement growing with ⟨W_y+, W_y−⟩, catastrophic runs);
    partly if the LM displaces at all (π(y+) fell in a multi-step run or after one step for
    some pair); not reproduced otherwise. The unconstrained-features model is reported but
    never counts: its proportionality holds by algebra (an identity is not evidence).
    """
    per_run = geometry.groupby(["seed", "statement", "pair"])
    r_lm = float(per_run.apply(lambda g: np.corrcoef(g["inner"], g["dlogp_lm"])[0, 1], include_groups=False).median())
    r_lm_features = float(per_run.apply(lambda g: np.corrcoef(g["inner"], g["dlogp_features"])[0, 1], include_groups=False).min())
    rank_lm = float(pairs[["inner_pos_neg", "dlogp_pos"]].corr(method="spearman").iloc[0, 1])
    share_displaced = float(table["displaced"].mean())
    share_catastrophic = float(table["is_catastrophic"].mean())
    r_features = float(features["z_corr"].min())
    rank_features = float(features[["inner_pos_neg", "dlogp_pos_first_order"]].corr(method="spearman").iloc[0, 1])
    displaced_features = float((features["p_pos_after"] < features["p_pos_before"]).mean())
    one_step_displaced = float((pairs["dlogp_pos"] < -FLOAT64_NOISE).mean())
    lm_parts = [r_lm >= CORRELATION, rank_lm <= -RANK_CORRELATION, share_catastrophic > 0]
    c10 = verdict(all(lm_parts), share_displaced > 0 or one_step_displaced > 0)
    return claims_frame(
        [
            {
                "claim_id": "C10",
                "statement": "Single-token DPO lowers log π(y+) when ⟨W_y+, W_y−⟩ is large, and the mass moves to tokens z "
                "in proportion to ⟨W_z, W_y+ − W_y−⟩, which can be tokens of the opposite meaning.",
                "paper_value": "displacement in OLMo-1B, Gemma-2B, Llama-3-8B, some of it catastrophic (talk's table)",
                "our_value": f"tiny LM: Pearson(⟨W_z, W_y+ − W_y−⟩, Δ log π(z)) after one step, median over runs {r_lm:.2f} "
                f"(its unconstrained-features model: ≥ {r_lm_features:.3f}); "
                f"Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) = {rank_lm:+.2f} over {len(pairs)} pairs, "
                f"π(y+) fell after one step for {one_step_displaced:.0%} of them; "
                f"multi-step runs: π(y+) fell in {share_displaced:.0%}, "
                f"catastrophic in {share_catastrophic:.0%} of {len(table)}. "
                f"Unconstrained features ({len(features)} random instances): Pearson ≥ {r_features:.3f}, "
                f"Spearman {rank_features:+.2f}, π(y+) fell in {displaced_features:.0%}",
                "verdict": c10,
            }
        ]
    )
