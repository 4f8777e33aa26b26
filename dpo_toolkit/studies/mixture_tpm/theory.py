"""Mixture maths of the TPM post (dpo-mixture-tpm-theorem.md) on finite output spaces.

The reference policy is a mixture p_ref = α·p_A + (1 − α)·p_U of an aligned and an
unaligned distribution over the same finite outputs. All functions are pure and take
NumPy arrays indexed by output y; probabilities are float64.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpo_toolkit.core.stats import logsumexp


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


def exact_condition(p_aligned, p_unaligned, rewards, beta: float) -> bool:
    """The exact condition for TPM(A) ≥ α: E_{p_A}[e^{r/β}] ≥ E_{p_U}[e^{r/β}].

    Since TPM(A) = α·E_A/Z with Z = α·E_A + (1 − α)·E_U (Lemma 1's weights summed against p_A),
    TPM(A) ≥ α ⇔ E_A ≥ Z ⇔ (1 − α)·E_A ≥ (1 − α)·E_U, i.e. E_A ≥ E_U for any α in (0, 1).
    Neither the worded assumptions nor the proof's covariance appear: the covariance condition is
    sufficient, not necessary. Computed with r shifted by its maximum (e^{r/β} overflows otherwise)."""
    p_aligned, p_unaligned, rewards = (np.asarray(a, dtype=np.float64) for a in (p_aligned, p_unaligned, rewards))
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    tilt = np.exp((rewards - rewards.max()) / beta)
    return bool((p_aligned * tilt).sum() >= (p_unaligned * tilt).sum())


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
    (see ``assumptions``), tpm_aligned, log_tpm_unaligned, `holds`: TPM(A) ≥ α and
    0 < TPM(U) ≤ 1 − α (to a relative 1e-12, and TPM(U) > 0 read from its logarithm), and
    `exact`: ``exact_condition``, which must agree with `aligned_up` (TPM(A) ≥ α, read in log
    space without tolerance) in every case.
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
                         "log_tpm_unaligned": log_unaligned, "holds": bool(holds),
                         "aligned_up": bool(log_aligned >= np.log(alpha)),
                         "exact": exact_condition(p_aligned, p_unaligned, rewards, beta)})  # fmt: skip
    return pd.DataFrame(rows)
