"""The C17–C20 claims table of the mixture-TPM chapter."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide, identity, verdict
from dpo_toolkit.core.evidence import Check, clustered_share_interval, mean_interval
from dpo_toolkit.studies.mixture_tpm.policy import heat_table

LEMMA_TOLERANCE = 1e-12  # C17: float64 agreement that counts as an identity


KEPT_SHARE = 0.1
"""C20: DPO 'keeps' the unaligned mass when the trained policy's mean unaligned mass at T = 1
is at least this share of the reference's (a softmax never gives exactly zero, so 'non-zero'
alone is no evidence; a tenth of the reference's mass is not negligible)."""
AMPLIFIES = 1.0  # C20: heat amplifies the trained policy's mass more than the reference's (relative > 1)
BRINGS_BACK = 1.0  # C20 in full: at the hottest T the trained policy has at least the reference's T = 1 mass


CLAIMS = {
    "C17": ClaimText("Lemma 1: the KL-regularised optimum is a per-sample tilt of the mixture.", "an identity"),
    "C18": ClaimText(
        "Theorem 2: TPM(A) ≥ α and 0 < TPM(U) ≤ 1 − α for every β > 0 under its assumptions.", "holds for every β > 0"
    ),
    "C19": ClaimText("When an assumption fails, TPM(A) < α can happen.", "not stated (the theorem needs its assumptions)"),
    "C20": ClaimText(
        "A DPO-trained policy keeps non-zero unaligned (OOD) mass at every checkpoint, and sampling temperature re-amplifies it.",
        "this project's claim, from Theorem 2 and the post's jailbreak remark",
    ),
}


def mixture_claims(lemma_error: float, theorem: pd.DataFrame, masses: pd.DataFrame, temperatures: pd.DataFrame) -> pd.DataFrame:
    """The C17–C20 claims table.

    lemma_error: ``lemma1_max_error``; theorem: ``theorem2_table``; masses: the trained
    policies' ``masses_at_checkpoints`` rows with seed and beta columns (step 0 is the
    SFT reference); temperatures: ``temperature_masses`` (the reference and the last
    checkpoint at several temperatures, T = 1 among them).

    C17 and C19 are checks of an identity and of a near-certainty on random instances:
    ``verified (identity)``, never counted as reproductions. C18 is tested on the assumptions
    as worded (precondition: some random instance meets them); that it holds under the
    covariance the proof uses is reported, never counted (the proof's own premise makes it
    hold). C20 needs more than a softmax's positivity: DPO keeps ≥ KEPT_SHARE of the
    reference's unaligned mass and heat amplifies the trained policy's mass more than the
    reference's (partly: both), with heat bringing back at least the reference's T = 1 mass
    for 'reproduced'. C20 reads trained runs and is decided on intervals over seeds (each
    ratio at the seed's worst β; ``claims.decide``): inconclusive on fewer than three seeds.
    """
    heat = heat_table(temperatures)
    c17 = {
        "claim_id": "C17",
        "our_value": f"max |difference| {lemma_error:.1e} over random instances and β in [1e-3, 1e3]",
        "verdict": identity(lemma_error <= LEMMA_TOLERANCE),
    }
    return claims_frame([c17, _c18(theorem), _c19(theorem), _c20(masses, heat)], text=CLAIMS)


def _c18(theorem: pd.DataFrame) -> dict:
    """C18's row: Theorem 2 on the random cases meeting its assumptions as worded (those meeting the
    covariance the proof uses reported beside them)."""
    proof, stated = theorem[theorem["proof_needs"]], theorem[theorem["as_stated"]]
    proof_fails, stated_fails = int((~proof["holds"]).sum()), int((~stated["holds"]).sum())
    stated_broken = stated.loc[~stated["holds"], "instance"].nunique()
    # the exact condition TPM(A) ≥ α ⇔ E_{p_A}[e^{r/β}] ≥ E_{p_U}[e^{r/β}] (theory.exact_condition), checked
    # against the TPM computed in every case: an identity, reported beside the claim, never counted
    disagree = int((theorem["exact"] != theorem["aligned_up"]).sum())
    exact_fails = int((~stated["exact"]).sum())
    return {
        "claim_id": "C18",
        "our_value": f"{proof_fails} failures in {len(proof)} (instance, β) cases meeting the covariance the proof uses; "
        f"{stated_fails} failures in {len(stated)} cases meeting the assumptions as worded "
        f"({stated_broken} instances). The exact condition, TPM(A) ≥ α ⇔ E_pA[e^(r/β)] ≥ E_pU[e^(r/β)], disagrees "
        f"with the computed TPM in {disagree} of {len(theorem)} cases; it fails in {exact_fails} of the worded cases",
        "verdict": verdict(stated_fails == 0, testable=len(stated) > 0),
        "precondition": f"random instances meet the assumptions as worded: {len(stated)} (instance, β) cases",
    }


def _c19(theorem: pd.DataFrame) -> dict:
    """C19's row: TPM(A) < α in some random case that violates the worded assumptions."""
    failed = theorem[~theorem["as_stated"]]
    below = failed[failed["tpm_aligned"] < failed["alpha"]]
    shortfall = float((below["alpha"] - below["tpm_aligned"]).max()) if len(below) else 0.0
    return {
        "claim_id": "C19",
        "our_value": f"TPM(A) < α in {len(below)} of {len(failed)} cases violating the worded assumptions; "
        f"largest shortfall α − TPM(A) = {shortfall:.2f}",
        "verdict": identity(len(below) > 0),
    }


def _c20(masses: pd.DataFrame, heat: pd.DataFrame) -> dict:
    """C20's row: the unaligned mass DPO keeps and heat's amplification of it, decided on intervals over seeds."""
    trained = masses[masses["step"] > 0]
    floor = float(trained["log_unaligned"].min()) / np.log(10)  # log10 of the smallest unaligned mass
    # C20 on intervals over seeds: a seed sets the SFT reference and the DPO runs of every β, so the
    # runs of one seed are one replicate. The claim is about every run; per seed it is read on
    # the seed's worst β (the smallest ratio over its β), then summarised over seeds.
    worst = heat.groupby("seed")[["kept", "relative", "heat_back"]].min()
    kept = Check("unaligned mass DPO keeps (last / reference at T = 1), worst β per seed", mean_interval(worst["kept"]),
                 KEPT_SHARE)  # fmt: skip
    more_than_reference = Check("heat's amplification, trained / reference, worst β per seed",
                                mean_interval(worst["relative"]), AMPLIFIES)  # fmt: skip
    brought_back = Check("mass at the hottest T / the reference's at T = 1, worst β per seed",
                         mean_interval(worst["heat_back"]), BRINGS_BACK)  # fmt: skip
    hottest = heat["hottest"].iloc[0]
    last = masses[masses["step"] == masses["step"].max()].set_index(["seed", "beta", "prompt"])["log_unaligned"]
    reference = masses[masses["step"] == 0].set_index(["seed", "beta", "prompt"])["log_unaligned"]
    shrank = float((last <= reference.loc[last.index]).mean())
    return {
        "claim_id": "C20",
        "our_value": f"{direction(heat)}. Over {len(heat)} runs ({len(worst)} seed{'s' if len(worst) != 1 else ''}): DPO keeps "
        f"{heat['kept'].min():.0%}–{heat['kept'].max():.0%} of the reference's mean unaligned mass (final mass ≤ "
        f"the reference's at {shrank:.0%} of prompts); at T={hottest:g} "
        f"the trained policy has {heat['heat_back'].min():.2f}–{heat['heat_back'].max():.2f}× the reference's T=1 mass, "
        f"and heat amplifies it {heat['relative'].min():.2f}–{heat['relative'].max():.2f}× as much as the reference's; "
        f"smallest mass 10^{floor:.1f}",
        **decide([kept, more_than_reference, brought_back], part=[kept, more_than_reference]),
    }


def direction(heat: pd.DataFrame) -> str:
    """Which way DPO moved the unaligned mass, run by run (``heat_table``'s kept = last / reference at
    T = 1, mean over prompts): how many runs raised it, in how many seeds, the share with its 95 %
    Wilson interval at the effective number of runs (runs of one seed share its reference:
    ``clustered_share_interval``), and the largest rise. Off the data, DPO's implicit reward need not
    meet Theorem 2's conditions, so a rise is a finding, not an error."""
    raised = heat[heat["kept"] > 1]
    share = clustered_share_interval(heat["kept"] > 1, heat["seed"])
    where = (
        f" in {raised['seed'].nunique()} of {heat['seed'].nunique()} seeds, up to {raised['kept'].max():.0%} of the "
        "reference's mass"
        if len(raised)
        else ""
    )
    return (
        f"DPO raised the unaligned mass (T = 1, mean over prompts) in {len(raised)} of {len(heat)} runs{where} "
        f"(share {share.estimate:.2f}, 95 % CI [{share.low:.2f}, {share.high:.2f}]) and lowered it in the rest"
    )
