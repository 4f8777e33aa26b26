"""Mixture maths of the TPM post (dpo-mixture-tpm-theorem.md) on finite output spaces.

The reference policy is a mixture p_ref = α·p_A + (1 − α)·p_U of an aligned and an
unaligned distribution over the same finite outputs. All functions are pure and take
NumPy arrays indexed by output y; probabilities are float64.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import claims_frame
from dpo_toolkit.core.parameters import BETAS, SWEEP_SETUP, check, check_sweep_setup, fail, integer, reals
from dpo_toolkit.core.stats import logsumexp

# The notebook's `parameters` cell, one spec per variable (notebooks/mixture_tpm.md).
PARAMETERS = {
    "n_instances": integer(1),
    "n_outputs": integer(2),
    "n_theory_betas": integer(1),
    "theory_seed": integer(0),
    "betas": BETAS,
    **SWEEP_SETUP,
    "temperatures": reals(0, open_low=True),
}


def check_parameters(values) -> None:
    """Check the mixture-TPM notebook's parameters (PARAMETERS) and the rules between them."""
    check(PARAMETERS, values)
    if not any(np.isclose(t, 1.0) for t in values["temperatures"]):
        fail("temperatures", "a list of numbers > 0 that includes 1.0 (the policy as trained)", values["temperatures"])
    check_sweep_setup(values)


def _check(alpha: float, p_aligned: np.ndarray, p_unaligned: np.ndarray, rewards: np.ndarray) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for name, p in (("p_aligned", p_aligned), ("p_unaligned", p_unaligned)):
        if p.ndim != 1 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"{name} must be a 1-D probability vector (non-negative, summing to 1)")
    if rewards.shape != p_aligned.shape or p_unaligned.shape != p_aligned.shape:
        raise ValueError(f"shapes differ: p_aligned {p_aligned.shape}, p_unaligned {p_unaligned.shape}, rewards {rewards.shape}")


def tilted_optimum(p_ref: np.ndarray, rewards: np.ndarray, beta: float) -> np.ndarray:
    """argmax_p E_p[r] − β KL(p ‖ p_ref) = p_ref · e^{r/β} / Z (the Gibbs form in the post's proof)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    with np.errstate(divide="ignore"):
        logits = np.log(p_ref) + rewards / beta  # −inf off the support
    logits = logits - logits[np.isfinite(logits)].max()
    weights = np.exp(logits)
    return weights / weights.sum()


def tilt_weights(alpha: float, p_aligned, p_unaligned, rewards, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Lemma 1: the per-output weights α_A(y) = α e^{r/β} / Z and α_U(y) = (1 − α) e^{r/β} / Z,
    with Z = Σ_y p_ref(y) e^{r(y)/β}; computed stably by shifting r by its maximum."""
    p_aligned, p_unaligned, rewards = (np.asarray(a, dtype=np.float64) for a in (p_aligned, p_unaligned, rewards))
    _check(alpha, p_aligned, p_unaligned, rewards)
    p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
    support = p_ref > 0
    scaled = np.exp((rewards - rewards[support].max()) / beta)  # e^{r/β} up to a common factor
    z = (p_ref * scaled)[support].sum()
    return alpha * scaled / z, (1 - alpha) * scaled / z


def log_total_probability_mass(alpha: float, p_aligned, p_unaligned, rewards, beta: float) -> tuple[float, float]:
    """log TPM(A) and log TPM(U) of Theorem 2, in log space, so that a mass too small for
    float64 (e^{−5000}, say) still shows as a finite logarithm rather than as 0."""
    p_aligned, p_unaligned, rewards = (np.asarray(a, dtype=np.float64) for a in (p_aligned, p_unaligned, rewards))
    _check(alpha, p_aligned, p_unaligned, rewards)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    with np.errstate(divide="ignore"):
        log_aligned = np.log(alpha) + np.log(p_aligned) + rewards / beta  # log of α p_A e^{r/β}
        log_unaligned = np.log(1 - alpha) + np.log(p_unaligned) + rewards / beta
    log_z = float(logsumexp(np.concatenate([log_aligned, log_unaligned])))
    return float(logsumexp(log_aligned)) - log_z, float(logsumexp(log_unaligned)) - log_z


def total_probability_mass(alpha: float, p_aligned, p_unaligned, rewards, beta: float) -> tuple[float, float]:
    """Theorem 2's TPM(A) = Σ_y α_A(y) p_A(y) and TPM(U) = Σ_y α_U(y) p_U(y); they sum to 1."""
    log_aligned, log_unaligned = log_total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)
    return float(np.exp(log_aligned)), float(np.exp(log_unaligned))


def uniform_covariance(f: np.ndarray, g: np.ndarray, support: np.ndarray) -> float:
    """Cov(f, g) under the uniform distribution over the outputs where `support` is True."""
    f, g = np.asarray(f, dtype=np.float64)[support], np.asarray(g, dtype=np.float64)[support]
    return float(((f - f.mean()) * (g - g.mean())).mean())


def assumptions(alpha: float, p_aligned, p_unaligned, rewards, beta: float) -> dict[str, bool]:
    """Theorem 2's hypotheses, read two ways, over the uniform distribution on supp p_ref.

    as_stated: Cov(r, p_A) > 0, Cov(r, p_U) < 0 and r finite (the theorem's wording).
    proof_needs: Cov(e^{r/β}, p_A) ≥ 0 and Cov(e^{r/β}, p_U) ≤ 0 at this β, the inequality
    the proof's first step uses. A monotone map keeps the sign of a rank correlation but
    not of a covariance, so the first does not imply the second.
    """
    p_aligned, p_unaligned, rewards = (np.asarray(a, dtype=np.float64) for a in (p_aligned, p_unaligned, rewards))
    _check(alpha, p_aligned, p_unaligned, rewards)
    support = alpha * p_aligned + (1 - alpha) * p_unaligned > 0
    tilt = np.exp((rewards - rewards[support].max()) / beta)
    return {
        "as_stated": bool(
            np.all(np.isfinite(rewards))
            and uniform_covariance(rewards, p_aligned, support) > 0
            and uniform_covariance(rewards, p_unaligned, support) < 0
        ),
        "proof_needs": bool(
            uniform_covariance(tilt, p_aligned, support) >= 0 and uniform_covariance(tilt, p_unaligned, support) <= 0
        ),
    }


def random_instance(rng: np.random.Generator, n_outputs: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(α, p_A, p_U, r): α ~ U(0.05, 0.95), p_A and p_U ~ Dirichlet(1) over n_outputs, r ~ N(0, 2²)."""
    return (
        rng.uniform(0.05, 0.95),
        rng.dirichlet(np.ones(n_outputs)),
        rng.dirichlet(np.ones(n_outputs)),
        2 * rng.normal(size=n_outputs),
    )


def lemma1_max_error(n_instances: int, n_outputs: int, betas: np.ndarray, seed: int) -> float:
    """Largest |p_θ(y) − (α_A(y) p_A(y) + α_U(y) p_U(y))| over random instances, β and y,
    with p_θ the Gibbs optimum (the proof's closed form) and α_A, α_U Lemma 1's weights."""
    rng = np.random.default_rng(seed)
    error = 0.0
    for _ in range(n_instances):
        alpha, p_aligned, p_unaligned, rewards = random_instance(rng, n_outputs)
        p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
        for beta in betas:
            weight_aligned, weight_unaligned = tilt_weights(alpha, p_aligned, p_unaligned, rewards, beta)
            tilted = weight_aligned * p_aligned + weight_unaligned * p_unaligned
            error = max(error, float(np.abs(tilted - tilted_optimum(p_ref, rewards, beta)).max()))
    return error


def theorem2_table(n_instances: int, n_outputs: int, betas: np.ndarray, seed: int) -> pd.DataFrame:
    """Theorem 2 checked on random instances at every β, with both readings of its assumptions.

    One row per instance and β: alpha, the assumption flags `as_stated` and `proof_needs`
    (see ``assumptions``), tpm_aligned, log_tpm_unaligned, and `holds`: TPM(A) ≥ α and
    0 < TPM(U) ≤ 1 − α (to a relative 1e-12, and TPM(U) > 0 read from its logarithm).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for instance in range(n_instances):
        alpha, p_aligned, p_unaligned, rewards = random_instance(rng, n_outputs)
        for beta in betas:
            log_aligned, log_unaligned = log_total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)
            flags = assumptions(alpha, p_aligned, p_unaligned, rewards, beta)
            tpm_aligned, tpm_unaligned = np.exp(log_aligned), np.exp(log_unaligned)
            holds = (
                tpm_aligned >= alpha * (1 - 1e-12) and np.isfinite(log_unaligned) and tpm_unaligned <= (1 - alpha) * (1 + 1e-12)
            )
            rows.append({"instance": instance, "beta": float(beta), "alpha": alpha, **flags, "tpm_aligned": tpm_aligned,
                         "log_tpm_unaligned": log_unaligned, "holds": bool(holds)})  # fmt: skip
    return pd.DataFrame(rows)


LEMMA_TOLERANCE = 1e-12  # C17: float64 agreement that counts as an identity


def mixture_claims(lemma_error: float, theorem: pd.DataFrame, masses: pd.DataFrame, temperatures: pd.DataFrame) -> pd.DataFrame:
    """The C17–C20 claims table.

    lemma_error: ``lemma1_max_error``; theorem: ``theorem2_table``; masses: the trained
    policies' ``masses_at_checkpoints`` rows with seed and beta columns (step 0 is the
    SFT reference); temperatures: the last checkpoint's rows at several temperatures
    (columns seed, beta, temperature, prompt, log_unaligned).
    """
    if not np.isclose(temperatures["temperature"], 1.0).any():
        raise ValueError("mixture_claims: temperatures must include T = 1, the baseline of the amplification")
    c17 = "reproduced" if lemma_error <= LEMMA_TOLERANCE else "not reproduced"

    proof, stated = theorem[theorem["proof_needs"]], theorem[theorem["as_stated"]]
    proof_fails, stated_fails = int((~proof["holds"]).sum()), int((~stated["holds"]).sum())
    c18 = "reproduced" if proof_fails == stated_fails == 0 else "partly" if proof_fails == 0 else "not reproduced"
    stated_broken = stated.loc[~stated["holds"], "instance"].nunique()

    failed = theorem[~theorem["as_stated"]]
    below = failed[failed["tpm_aligned"] < failed["alpha"]]
    shortfall = float((below["alpha"] - below["tpm_aligned"]).max()) if len(below) else 0.0
    c19 = "reproduced" if len(below) else "not reproduced"

    trained = masses[masses["step"] > 0]
    floor = float(trained["log_unaligned"].min()) / np.log(10)  # log10 of the smallest unaligned mass
    never_zero = bool(np.isfinite(floor))
    mean_mass = (
        temperatures.assign(mass=np.exp(temperatures["log_unaligned"])).groupby(["seed", "beta", "temperature"])["mass"].mean()
    )
    by_run = mean_mass.unstack("temperature")
    hottest = by_run.columns.max()
    amplification = by_run[hottest] / by_run[1.0]
    amplified = bool((amplification > 1).all())
    c20 = "reproduced" if never_zero and amplified else "partly" if never_zero or amplified else "not reproduced"
    last = masses[masses["step"] == masses["step"].max()].set_index(["seed", "beta", "prompt"])["log_unaligned"]
    reference = masses[masses["step"] == 0].set_index(["seed", "beta", "prompt"])["log_unaligned"]
    shrank = float((last <= reference.loc[last.index]).mean())
    return claims_frame(
        [
            {
                "claim_id": "C17",
                "statement": "Lemma 1: the KL-regularised optimum is a per-sample tilt of the mixture.",
                "paper_value": "an identity",
                "our_value": f"max |difference| {lemma_error:.1e} over random instances and β in [1e-3, 1e3]",
                "verdict": c17,
            },
            {
                "claim_id": "C18",
                "statement": "Theorem 2: TPM(A) ≥ α and 0 < TPM(U) ≤ 1 − α for every β > 0 under its assumptions.",
                "paper_value": "holds for every β > 0",
                "our_value": f"{proof_fails} failures in {len(proof)} (instance, β) cases meeting the covariance the proof uses; "
                f"{stated_fails} failures in {len(stated)} cases meeting the assumptions as worded "
                f"({stated_broken} instances)",
                "verdict": c18,
            },
            {
                "claim_id": "C19",
                "statement": "When an assumption fails, TPM(A) < α can happen.",
                "paper_value": "not stated (the theorem needs its assumptions)",
                "our_value": f"TPM(A) < α in {len(below)} of {len(failed)} cases violating the worded assumptions; "
                f"largest shortfall α − TPM(A) = {shortfall:.2f}",
                "verdict": c19,
            },
            {
                "claim_id": "C20",
                "statement": "A DPO-trained policy keeps non-zero unaligned (OOD) mass at every checkpoint, "
                "and sampling temperature re-amplifies it.",
                "paper_value": "this project's claim, from Theorem 2 and the post's jailbreak remark",
                "our_value": f"smallest unaligned mass over prompts, checkpoints, β and seeds: 10^{floor:.1f}; "
                f"mean mass at T={hottest:g} / at T=1: {amplification.min():.1f}× to {amplification.max():.1f}× "
                f"over {len(amplification)} runs; final mass ≤ the reference's at {shrank:.0%} of prompts",
                "verdict": c20,
            },
        ]
    )


def mass_summary(masses: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, beta, step): the mean unaligned mass over prompts and log10 of the smallest."""
    return (
        masses.assign(mass=np.exp(masses["log_unaligned"]), log10=masses["log_unaligned"] / np.log(10))
        .groupby(["seed", "beta", "step"], as_index=False)
        .agg(mean_mass=("mass", "mean"), min_log10_mass=("log10", "min"))
    )
