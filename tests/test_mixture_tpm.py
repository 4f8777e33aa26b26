import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.studies.mixture_tpm.claims import mixture_claims
from dpo_toolkit.studies.mixture_tpm.policy import heat_table, mass_summary
from dpo_toolkit.studies.mixture_tpm.theory import (
    assumptions,
    exact_condition,
    lemma1_max_error,
    log_total_probability_mass,
    random_instance,
    theorem2_table,
    tilt_weights,
    tilted_optimum,
    total_probability_mass,
)

BETAS = np.geomspace(1e-3, 1e3, 25)


def objective(p, p_ref, rewards, beta):
    support = p > 0
    return float((p * rewards).sum() - beta * (p[support] * np.log(p[support] / p_ref[support])).sum())


def test_lemma1_tilted_optimum_is_the_per_sample_tilt_of_the_mixture():
    rng = np.random.default_rng(0)
    for _ in range(50):
        alpha, p_aligned, p_unaligned, rewards = random_instance(rng, 6)
        p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
        for beta in BETAS:
            weight_aligned, weight_unaligned = tilt_weights(alpha, p_aligned, p_unaligned, rewards, beta)
            tilted = weight_aligned * p_aligned + weight_unaligned * p_unaligned
            assert np.allclose(tilted, tilted_optimum(p_ref, rewards, beta), rtol=1e-10, atol=1e-300)


def test_tilted_optimum_beats_every_perturbation():
    rng = np.random.default_rng(1)
    alpha, p_aligned, p_unaligned, rewards = random_instance(rng, 6)
    p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
    for beta in (0.1, 1.0, 10.0):
        best = tilted_optimum(p_ref, rewards, beta)
        for _ in range(200):
            other = rng.dirichlet(np.ones(len(p_ref)) * 5) * 0.1 + best * 0.9
            assert objective(best, p_ref, rewards, beta) >= objective(other, p_ref, rewards, beta) - 1e-12


def test_theorem2_holds_when_the_tilt_covaries_as_the_proof_needs():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(200):
        alpha, p_aligned, p_unaligned, rewards = random_instance(rng, 6)
        order = np.argsort(rewards)  # p_A increasing in r, p_U decreasing: every tilt e^{r/β} covaries as needed
        p_aligned[order], p_unaligned[order] = np.sort(p_aligned), np.sort(p_unaligned)[::-1]
        for beta in BETAS:
            assert assumptions(alpha, p_aligned, p_unaligned, rewards, beta)["proof_needs"]
            tpm_aligned, tpm_unaligned = total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)
            assert tpm_aligned + tpm_unaligned == pytest.approx(1.0)
            assert alpha - 1e-12 <= tpm_aligned < 1
            assert 0 < tpm_unaligned <= 1 - alpha + 1e-12
            checked += 1
    assert checked == 200 * len(BETAS)


def test_theorem2_as_worded_has_a_counterexample():
    # Cov(r, p_A) > 0 and Cov(r, p_U) < 0 under the uniform distribution, r finite; yet at small β
    # the tilt e^{r/β} puts almost all mass on output 1, where p_U dominates.
    alpha, p_aligned, p_unaligned = 0.7, np.array([0.78, 0.08, 0.14]), np.array([0.02, 0.49, 0.49])
    rewards = np.array([1.1, 1.8, -0.5])
    assert assumptions(alpha, p_aligned, p_unaligned, rewards, beta=1e-3) == {"as_stated": True, "proof_needs": False}
    tpm_aligned, tpm_unaligned = total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta=1e-3)
    assert tpm_aligned < alpha - 0.3
    assert tpm_unaligned > 1 - alpha  # the unaligned mass grew
    assert total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta=1e3)[0] == pytest.approx(alpha, abs=1e-3)


def test_unaligned_mass_never_vanishes_for_finite_rewards():
    alpha, p_aligned, p_unaligned = 0.5, np.array([0.9, 0.1, 0.0]), np.array([0.0, 0.1, 0.9])
    rewards = np.array([5.0, 0.0, -5.0])
    for beta in BETAS:
        log_unaligned = log_total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)[1]
        assert np.isfinite(log_unaligned)
    # the exact value: TPM(U) = (0.05 e^0 + 0.45 e^{-5/β}) / (0.45 e^{5/β} + 0.1 + 0.45 e^{-5/β})
    beta = 1e-3
    expected = np.logaddexp(np.log(0.05), np.log(0.45) - 5 / beta) - np.log(0.45) - 5 / beta  # leading terms
    assert log_total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)[1] == pytest.approx(expected, rel=1e-9)
    assert total_probability_mass(alpha, p_aligned, p_unaligned, rewards, beta)[1] == 0.0  # float64 underflows; the log does not


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.5, [0.5, 0.5], [0.5, 0.5], [0.0, 1.0], 1.0), "alpha must be in"),
        ((0.5, [0.7, 0.7], [0.5, 0.5], [0.0, 1.0], 1.0), "p_aligned must be a 1-D probability vector"),
        ((0.5, [0.5, 0.5], [0.5, 0.5], [0.0, 1.0, 2.0], 1.0), "shapes differ"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        total_probability_mass(*args)
    with pytest.raises(ValueError, match="beta must be > 0"):
        tilted_optimum(np.array([0.5, 0.5]), np.array([0.0, 1.0]), 0.0)


def test_tilted_optimum_matches_a_numerical_optimiser():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    alpha, p_aligned, p_unaligned, rewards = random_instance(rng, 4)
    p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
    beta = 0.7
    logits = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)
    r, ref = torch.as_tensor(rewards), torch.as_tensor(p_ref)

    def negative_objective():
        optimizer.zero_grad()
        p = logits.softmax(-1)
        loss = -((p * r).sum() - beta * (p * (p / ref).log()).sum())
        loss.backward()
        return loss

    optimizer.step(negative_objective)
    found = logits.softmax(-1).detach().numpy()
    assert np.allclose(found, tilted_optimum(p_ref, rewards, beta), atol=1e-6)
    assert objective(tilted_optimum(p_ref, rewards, beta), p_ref, rewards, beta) >= objective(found, p_ref, rewards, beta) - 1e-12


def test_theorem2_table_flags_match_assumptions_and_the_proof_reading_never_fails():
    betas = np.geomspace(1e-3, 1e3, 7)
    table = theorem2_table(40, 5, betas, seed=4)
    assert len(table) == 40 * 7
    row = table.iloc[9]
    rng = np.random.default_rng(4)
    instances = [random_instance(rng, 5) for _ in range(2)]
    assert assumptions(*instances[1], row["beta"]) == {"as_stated": row["as_stated"], "proof_needs": row["proof_needs"]}
    assert table.loc[table["proof_needs"], "holds"].all()
    assert np.allclose(table["tpm_aligned"] + np.exp(table["log_tpm_unaligned"]), 1.0)
    assert lemma1_max_error(20, 5, betas, seed=4) < 1e-12


def _temperatures(runs: dict[tuple[int, float], tuple[float, float]]) -> pd.DataFrame:
    """Temperature masses where, in every (seed, β) run, the reference has mean unaligned mass 0.1
    at T = 1 and 0.15 at T = 2, and the last checkpoint (cold, hot) = runs[seed, β] on both prompts.
    So kept = cold / 0.1, heat_back = hot / 0.1 and relative = (hot / cold) / 1.5."""
    frames = [
        pd.DataFrame(
            {
                "seed": seed,
                "beta": beta,
                "checkpoint": ["reference"] * 4 + ["last"] * 4,
                "temperature": [1.0, 1.0, 2.0, 2.0] * 2,
                "prompt": [1, 2] * 4,
                "log_unaligned": np.log([0.1, 0.1, 0.15, 0.15, cold, cold, hot, hot]),
            }
        )
        for (seed, beta), (cold, hot) in runs.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _claims_inputs(stated_holds: bool, hot: float, last_cold: float = 0.05, seeds=(0, 1, 2)):
    """A theorem table, masses, and temperature masses (``_temperatures``) in which every seed's
    run (β = 0.1) has the last checkpoint at last_cold and hot."""
    theorem = pd.DataFrame(
        {
            "instance": [0, 1, 2],
            "beta": [1.0, 1.0, 1.0],
            "alpha": [0.5, 0.5, 0.5],
            "as_stated": [True, True, False],
            "proof_needs": [True, False, False],
            "tpm_aligned": [0.6, 0.55 if stated_holds else 0.4, 0.3],
            "log_tpm_unaligned": np.log([0.4, 0.45 if stated_holds else 0.6, 0.7]),
            "holds": [True, stated_holds, False],
            "aligned_up": [True, stated_holds, False],
            "exact": [True, stated_holds, False],
        }
    )
    masses = pd.concat(
        [
            pd.DataFrame(
                {
                    "seed": seed,
                    "beta": 0.1,
                    "step": [0, 0, 5, 5],
                    "prompt": [1, 2, 1, 2],
                    "log_unaligned": np.log([0.2, 0.1, 0.05, 1e-30]),
                }
            )
            for seed in seeds
        ],
        ignore_index=True,
    )
    return theorem, masses, _temperatures({(seed, 0.1): (last_cold, hot) for seed in seeds})


IDENTITY = "verified (identity)"


@pytest.mark.parametrize(
    ("stated_holds", "hot", "last_cold", "expected_c20"),
    [
        (True, 0.3, 0.05, "reproduced"),  # kept 50 %, heat ×6 vs the reference's ×1.5, 3× the reference's T=1 mass
        (True, 0.09, 0.05, "partly"),  # heat amplifies more than the reference's, but brings back less than it had
        (True, 0.3, 0.005, "not reproduced"),  # DPO kept only 5 % of the reference's mass: heat amplifies 60×, by 1/kept
        (False, 0.06, 0.05, "not reproduced"),  # the old rule said partly: the mass is non-zero (a softmax's, always)
    ],
)
def test_mixture_claims_verdicts(stated_holds, hot, last_cold, expected_c20):
    # three seeds with the same runs: every per-seed ratio is the same, its interval a point
    claims = mixture_claims(1e-16, *_claims_inputs(stated_holds, hot, last_cold))
    # C18 as worded: a failure there is not reproduced; holding under the proof's own premise no longer makes it partly
    assert claims["verdict"].tolist() == [IDENTITY, "reproduced" if stated_holds else "not reproduced", IDENTITY, expected_c20]
    assert "10^-30.0" in claims.loc[3, "our_value"]
    assert "100%" in claims.loc[3, "our_value"]  # both prompts' mass fell below the reference's
    assert claims.loc[3, "n"] == "3" and (claims.loc[:2, "n"] == "").all()  # the exact computations carry no interval
    assert mixture_claims(1e-6, *_claims_inputs(True, 0.3))["verdict"].iloc[0] == "not reproduced"


def test_c20_reads_each_seed_at_its_worst_beta():
    theorem, masses, _ = _claims_inputs(True, 0.3)
    # every seed: β = 0.1 as in "reproduced", but at β = 1 heat amplifies less than the reference's
    # ((0.06 / 0.05) / 1.5 = 0.8 < 1), and brings back only 0.6 of its T = 1 mass
    runs = {(seed, beta): (0.05, 0.3 if beta == 0.1 else 0.06) for seed in (0, 1, 2) for beta in (0.1, 1.0)}
    c20 = mixture_claims(0.0, theorem, masses, _temperatures(runs)).set_index("claim_id").loc["C20"]
    assert c20["verdict"] == "not reproduced" and (c20["n"], c20["estimate"], c20["threshold"]) == ("3", "0.8", "1")
    assert "Over 6 runs (3 seeds)" in c20["our_value"]


def test_c20_on_one_seed_or_disagreeing_seeds_is_inconclusive():
    assert mixture_claims(0.0, *_claims_inputs(True, 0.3, seeds=(0,)))["verdict"].iloc[3] == "inconclusive"
    assert mixture_claims(0.0, *_claims_inputs(True, 0.3, seeds=(0, 1)))["verdict"].iloc[3] == "inconclusive"
    theorem, masses, _ = _claims_inputs(True, 0.3)
    # heat brings back 0.8, 1.5 and 1.2 of the reference's T=1 mass: mean 1.17, sd 0.35; t's half-width
    # 4.30 · 0.35 / √3 = 0.87 straddles 1 (kept 50 % in every seed holds; relative 1.07, 2, 1.6 straddles too)
    runs = {(0, 0.1): (0.05, 0.08), (1, 0.1): (0.05, 0.15), (2, 0.1): (0.05, 0.12)}
    c20 = mixture_claims(0.0, theorem, masses, _temperatures(runs)).set_index("claim_id").loc["C20"]
    assert c20["verdict"] == "inconclusive"
    assert float(c20["ci_low"]) < 1.0 < float(c20["ci_high"])


def test_heat_table_against_hand_computed_ratios():
    heat = heat_table(_claims_inputs(True, 0.3)[2]).iloc[0]
    assert heat["kept"] == pytest.approx(0.5)
    assert heat["heat_back"] == pytest.approx(3.0)
    assert heat["relative"] == pytest.approx((0.3 / 0.05) / (0.15 / 0.1))


def test_mixture_claims_need_the_baseline_temperature():
    theorem, masses, temperatures = _claims_inputs(True, True)
    with pytest.raises(ValueError, match="must include T = 1"):
        mixture_claims(0.0, theorem, masses, temperatures.assign(temperature=temperatures["temperature"].replace(1.0, 0.5)))


def test_mass_summary_by_hand():
    masses = pd.DataFrame({"seed": 0, "beta": 0.1, "step": [3, 3], "prompt": [1, 2], "log_unaligned": np.log([0.2, 1e-5])})
    row = mass_summary(masses).iloc[0]
    assert row["mean_mass"] == pytest.approx((0.2 + 1e-5) / 2)
    assert row["min_log10_mass"] == pytest.approx(-5.0)


def test_c18_is_untestable_when_no_random_case_meets_the_worded_assumptions():
    theorem, masses, temperatures = _claims_inputs(True, 0.3)
    claims = mixture_claims(0.0, theorem.assign(as_stated=False), masses, temperatures).set_index("claim_id")
    assert claims.loc["C18", "verdict"] == "untestable here"
    assert "0 (instance, β) cases" in claims.loc["C18", "precondition"]


def _brute_force_tpm_aligned(alpha, p_aligned, p_unaligned, rewards, beta) -> float:
    """TPM(A) = Σ_y α_A(y) p_A(y) from Lemma 1's weights written out, in exact rational-free float64:
    α_A(y) = α e^{r/β} / Σ_y' p_ref(y') e^{r(y')/β}, without any shift (small instances only)."""
    p_ref = alpha * p_aligned + (1 - alpha) * p_unaligned
    z = sum(p_ref[y] * np.exp(rewards[y] / beta) for y in range(len(rewards)))
    return sum(alpha * np.exp(rewards[y] / beta) / z * p_aligned[y] for y in range(len(rewards)))


def test_exact_condition_agrees_with_brute_force_tpm_on_random_instances():
    rng = np.random.default_rng(7)
    worded_and_fails = 0
    for _ in range(400):
        alpha, p_aligned, p_unaligned, rewards = random_instance(rng, 4)
        for beta in (0.5, 2.0, 20.0):  # e^{r/β} without overflow for |r| ≲ 10
            up = _brute_force_tpm_aligned(alpha, p_aligned, p_unaligned, rewards, beta) >= alpha
            assert exact_condition(p_aligned, p_unaligned, rewards, beta) == up
            worded_and_fails += assumptions(alpha, p_aligned, p_unaligned, rewards, beta)["as_stated"] and not up
    # the worded assumptions hold and the conclusion fails: the cases the exact condition explains
    assert worded_and_fails > 0


def test_exact_condition_by_hand():
    # two outputs, r = (0, log 3) at β = 1: e^{r} = (1, 3). p_A = (0.5, 0.5) → E_A = 2; p_U = (0.2, 0.8) → E_U = 2.6
    p_aligned, p_unaligned, rewards = np.array([0.5, 0.5]), np.array([0.2, 0.8]), np.array([0.0, np.log(3)])
    assert not exact_condition(p_aligned, p_unaligned, rewards, 1.0)
    assert exact_condition(p_unaligned, p_aligned, rewards, 1.0)
    # TPM(A) = α·2 / (α·2 + (1 − α)·2.6) < α for every α in (0, 1)
    for alpha in (0.1, 0.5, 0.9):
        assert total_probability_mass(alpha, p_aligned, p_unaligned, rewards, 1.0)[0] < alpha
    with pytest.raises(ValueError, match="beta"):
        exact_condition(p_aligned, p_unaligned, rewards, 0.0)


def test_theorem2_table_exact_condition_never_disagrees():
    table = theorem2_table(200, 6, BETAS, seed=3)
    assert (table["exact"] == table["aligned_up"]).all()
    assert (table["aligned_up"] == (table["tpm_aligned"] >= table["alpha"])).all()
    worded = table[table["as_stated"]]
    assert (~worded["exact"]).any()  # the worded reading does not imply the exact condition


def test_c18_reports_the_exact_condition_and_its_disagreements():
    theorem, masses, temperatures = _claims_inputs(False, 0.3)
    c18 = mixture_claims(0.0, theorem, masses, temperatures).set_index("claim_id").loc["C18"]
    assert "disagrees with the computed TPM in 0 of 3 cases; it fails in 1 of the worded cases" in c18["our_value"]
    broken = theorem.assign(exact=[True, True, False])
    c18 = mixture_claims(0.0, broken, masses, temperatures).set_index("claim_id").loc["C18"]
    assert "in 1 of 3 cases" in c18["our_value"]


def test_c20_reports_the_runs_in_which_dpo_raised_the_unaligned_mass():
    theorem, masses, _ = _claims_inputs(True, 0.3)
    # seed 2's run ends at 0.35 against the reference's 0.1: raised to 350 %; the others lowered to 50 %
    runs = {(0, 0.1): (0.05, 0.3), (1, 0.1): (0.05, 0.3), (2, 0.1): (0.35, 0.6)}
    c20 = mixture_claims(0.0, theorem, masses, _temperatures(runs)).set_index("claim_id").loc["C20"]
    assert "raised the unaligned mass (T = 1, mean over prompts) in 1 of 3 runs in 1 of 3 seeds, up to 350%" in c20["our_value"]
    # the Wilson interval of 1 of 3: [0.0615, 0.792]
    assert "share 0.33, 95 % CI [0.06, 0.79]" in c20["our_value"]
    lowered = mixture_claims(0.0, *_claims_inputs(True, 0.3)).set_index("claim_id").loc["C20", "our_value"]
    assert "in 0 of 3 runs (share 0.00" in lowered
