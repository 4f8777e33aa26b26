"""C21: does removing high-CHES pairs reduce the OOD drift of DPO on Park's number line?

Each quantity per seed (a replicate: its reference), read as an interval over seeds."""

from __future__ import annotations

import pandas as pd

from dpo_toolkit.core.claims import claims_frame, decide
from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE
from dpo_toolkit.core.evidence import Check, mean_interval
from dpo_toolkit.studies.ches.mitigation import STRICT, final_rows, per_seed, preconditions, variant_columns


def drift_table(curves: pd.DataFrame) -> pd.DataFrame:
    """OOD drift per seed and variant: OOD rate at the last evaluation minus at step 0 (the
    reference); one row per seed, one column per variant."""
    return per_seed(final_rows(curves), "ood_rate") - per_seed(curves[curves["step"] == 0], "ood_rate")


def ood_drift(curves: pd.DataFrame) -> pd.Series:
    """OOD rate at the last evaluation minus at step 0 (the reference), mean over seeds, per variant."""
    return drift_table(curves).mean()


DRIFT_REDUCTION = 0.5  # C21: the filter must remove at least this share of the OOD drift


def _best_filter_drift(curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.Series, pd.Series]:
    """(drift per seed and variant, the all-pairs drift per seed, the best (lowest) CHES-filter
    drift per seed, the name of that filter per seed)."""
    drift = drift_table(curves)
    filters = variant_columns(curves, "CHES filter")
    if not filters:
        raise ValueError("drift_claims needs at least one CHES-filter variant")
    (all_pairs,) = variant_columns(curves, "all pairs")
    return drift, drift[all_pairs], drift[filters].min(axis=1), drift[filters].idxmin(axis=1)


def drift_claims(curves: pd.DataFrame, setup: str = "the grokking setup") -> pd.DataFrame:
    """The cross-study row C21 (no source): does CHES filtering reduce the OOD drift of
    `setup` (named in the statement)? Drift = OOD at the last evaluation minus OOD of the
    reference (step 0).

    Per seed (a replicate), the best CHES filter of that seed (the one whose drift is lowest)
    against all pairs; each quantity is read as an interval over seeds. Untestable here unless
    all-pairs DPO drifts by ``core.drift``'s rule, read per seed: its final OOD ≥ DRIFT_OOD and
    its rise over the reference's ≥ DRIFT_RISE. Reproduced when the best filter removes
    ≥ DRIFT_REDUCTION of the all-pairs drift, partly when it removes some (> 0), not reproduced
    otherwise.

    Reading chosen: 'removes ≥ r of the drift' is read on the linear form best − (1 − r) · all
    pairs ≤ 0 per seed, not on the ratio (all pairs − best) / all pairs, which is the same
    inequality where a seed drifts but explodes where a seed's all-pairs drift is near 0; its
    mean over seeds ≤ 0 is the old ratio of seed means ≥ r. The best filter is chosen per seed,
    not from seed means (an arg-min over means flips between machines on near ties; the per-seed
    minimum is continuous in the runs)."""
    drift, base, best, names = _best_filter_drift(curves)
    final = per_seed(final_rows(curves), "ood_rate")[base.name]
    excess = best - (1 - DRIFT_REDUCTION) * base
    full = Check(f"best filter's drift − {1 - DRIFT_REDUCTION:g} × all pairs' drift", mean_interval(excess), 0.0, above=False)
    part = Check("drift removed by the best filter", mean_interval(base - best), STRICT)
    drifts = preconditions([
        Check("all-pairs OOD rate at the last evaluation", mean_interval(final), DRIFT_OOD),
        Check("all-pairs OOD rise over the reference's", mean_interval(base), DRIFT_RISE - 1e-12),  # core.drift's float slack
    ])  # fmt: skip
    reference_ood = float((final - base).mean())
    means = drift.mean()
    per_variant = "; ".join(f"{name} {means[name]:+.3f}" for name in drift.columns)
    removed = f", removing {(base.mean() - best.mean()) / base.mean():.0%} of the all-pairs drift" if base.mean() > 0 else ""
    return claims_frame(
        [
            {
                "claim_id": "C21",
                "statement": f"Cross-study question: removing high-CHES pairs reduces the OOD drift of {setup}.",
                "paper_value": "no source answers it (the project's question)",
                "our_value": f"OOD at the last evaluation minus the reference's, mean over {len(drift)} seeds: "
                f"{per_variant}; each seed's best filter ({_tally(names)}) {best.mean():+.3f}{removed}",
                **decide(full, part=part, precondition=drifts),
                "precondition": f"all-pairs DPO drifts out of distribution (OOD ≥ {DRIFT_OOD:.0%} and ≥ "
                f"{DRIFT_RISE * 100:.0f} points above the reference's, intervals over seeds; means): "
                f"{reference_ood:.0%} → {final.mean():.0%}",
            }
        ]
    )


def _tally(names: pd.Series) -> str:
    """'A in 2 of 3 seeds, B in 1': how often each variant was a seed's best."""
    counts = list(names.value_counts().items())
    return ", ".join(f"{name} in {k}" + (f" of {len(names)} seeds" if i == 0 else "") for i, (name, k) in enumerate(counts))


def drift_answer(curves: pd.DataFrame, setup: str = "the grokking setup") -> str:
    """One Markdown sentence answering C21's question from the runs of `setup`: the all-pairs
    drift and that of each seed's best CHES filter (means over seeds), and whether the filter
    reduces the drift as C21 reads it (the interval over seeds of the drift it removes)."""
    drift, base, best, names = _best_filter_drift(curves)
    removed = Check("drift removed by the best filter", mean_interval(base - best), STRICT)
    if base.mean() <= 0:
        answer = "On all pairs the OOD rate does not rise here, so there is no drift for filtering to reduce (C21 is untestable)."
    elif removed.outcome is None:
        answer = (
            f"Whether CHES filtering reduces the OOD drift of {setup} is not decided by these {len(drift)} seed(s): "
            f"{removed.describe()}."
        )
    else:
        answer = f"CHES filtering {'reduces' if removed.outcome else 'does not reduce'} the OOD drift of {setup} here."
    return (
        f"**Answer, from this run:** OOD drift on all pairs {base.mean():+.3f}; with each seed's best CHES filter "
        f"({_tally(names)}) {best.mean():+.3f}. {answer}"
    )
