import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.studies.grokking import (
    almost_monotone_rise,
    final_ood_table,
    grokking_claims,
    relative_drawdown,
    rise_defect,
    run_statistics,
    tail_mean,
)


def test_curve_helpers():
    assert tail_mean(np.arange(20), 0.1) == pytest.approx(18.5)
    assert relative_drawdown([0, 1, 2, 3]) == 0.0
    assert relative_drawdown([0, 4, 3, 4]) == pytest.approx(0.25)
    assert relative_drawdown([2, 2, 2]) == 0.0
    assert almost_monotone_rise([0, 1, 0.95, 2])
    assert not almost_monotone_rise([0, 2, 1, 2.1])
    assert not almost_monotone_rise([2, 1])
    assert rise_defect([0, 4, 3, 4.5]) == pytest.approx(1 / 4.5) and rise_defect([2, 1]) == 1.0


def per(value, seed, beta):
    """`value` as given, or its entry for (seed, β) when it is a function."""
    return value(seed, beta) if callable(value) else value


def fake_runs(ood_curve, sft_final=0.02, margin=None, seeds=(0, 1, 2), betas=(0.01, 0.1), sft_tail=None):
    """SFT's OOD rate is 0.5 until its last evaluation, sft_final there (and sft_tail just before, if
    given). ood_curve, margin and sft_final may be functions of (seed, β) (β is None for SFT)."""
    rows = []
    for seed in seeds:
        n = len(per(ood_curve, seed, betas[0]))
        sft_curve = np.full(n, 0.5)
        sft_curve[-1] = per(sft_final, seed, None)
        if sft_tail is not None:
            sft_curve[-2] = per(sft_tail, seed, None)
        rows += [{"phase": "sft", "beta": np.nan, "seed": seed, "step": step, "ood_rate": sft_curve[step]} for step in range(n)]
        for beta in betas:
            ood = np.asarray(per(ood_curve, seed, beta))
            m = np.linspace(0, 1, n) if margin is None else np.asarray(per(margin, seed, beta))
            rows += [
                {
                    "phase": "dpo",
                    "beta": beta,
                    "seed": seed,
                    "step": step,
                    "ood_rate": ood[step],
                    "seq_error": 0.0,
                    "accuracy": min(1.0, 0.5 + step / n),
                    "margin": m[step],
                    "kl": step,
                }
                for step in range(n)
            ]
    return pd.DataFrame(rows)


def claims_of(runs):
    return grokking_claims(runs).set_index("claim_id")


def verdicts(runs):
    return claims_of(runs)["verdict"].to_dict()


def drift(top):
    return np.concatenate([np.linspace(0.02, top, 10), np.full(10, top)])


def drift_by_seed(seed, beta):
    return drift(0.78 + 0.02 * seed)  # seeds end at 78, 80 and 82 % OOD


def test_the_papers_story_is_reproduced():
    runs = fake_runs(drift_by_seed, sft_final=lambda s, b: 0.01 + 0.01 * s, sft_tail=lambda s, b: 0.01 + 0.01 * s)
    claims = claims_of(runs)
    assert claims["verdict"].to_dict() == {"C1": "reproduced", "C2": "reproduced", "C3": "reproduced"}
    assert claims["n"].tolist() == ["3", "3", "3"]
    # C1: finals 1, 2, 3 %: mean 2 %, t interval 2 ± 4.303 · 1 / √3 = [-0.48, 4.48] %, below 5 %
    assert float(claims.loc["C1", "estimate"]) == pytest.approx(0.02)
    assert float(claims.loc["C1", "ci_high"]) == pytest.approx(0.02 + 4.303 * 0.01 / np.sqrt(3), abs=2e-4)
    # C2 decided on its first check, the lowest final over β per seed: 78, 80, 82 %
    assert float(claims.loc["C2", "estimate"]) == pytest.approx(0.80) and claims.loc["C2", "threshold"] == "0.5"
    assert "β=0.01: 80 ± 2 %" in claims.loc["C2", "our_value"]


def test_no_drift_is_not_reproduced():
    flat = np.full(20, 0.03)
    assert verdicts(fake_runs(flat, sft_final=0.3)) == {"C1": "not reproduced", "C2": "not reproduced", "C3": "not reproduced"}


def test_recovery_breaks_c2_and_a_dip_breaks_c3():
    grok = np.concatenate([np.linspace(0.02, 0.9, 10), np.linspace(0.9, 0.1, 10)])
    dip = np.concatenate([np.linspace(0, 1, 10), np.linspace(0.5, 1.1, 10)])
    claims = claims_of(fake_runs(grok, margin=dip))
    assert claims.loc["C2", "verdict"] == "not reproduced"
    assert claims.loc["C3", "verdict"] == "not reproduced"
    # decided by its part, the best β's slack: MONOTONE − the dip, 0.5 of a range of 1.1
    assert float(claims.loc["C3", "estimate"]) == pytest.approx(0.1 - 0.5 / 1.1, abs=1e-3)
    assert "largest dip of margin or accuracy 0.45 ± 0.00 of its range" in claims.loc["C3", "our_value"]


def test_one_beta_drifting_is_partly():
    """β = 0.01 drifts to 80 % in every seed, β = 0.1 stays at 3 %: C2 and C3 partly."""
    runs = fake_runs(lambda s, b: drift_by_seed(s, b) if b == 0.01 else np.full(20, 0.03))
    claims = claims_of(runs)
    assert claims.loc["C2", "verdict"] == "partly" and claims.loc["C3", "verdict"] == "partly"
    stats = run_statistics(runs)
    assert stats.loc[stats["beta"] == 0.1, "drift_slack"].tolist() == pytest.approx([-0.47] * 3)
    assert stats.loc[stats["beta"] == 0.01, "drift_slack"].tolist() == pytest.approx([0.28, 0.30, 0.32])


def test_c1_partly_and_straddling():
    partly = claims_of(
        fake_runs(np.full(20, 0.03), sft_final=lambda s, b: 0.10 + 0.01 * s, sft_tail=lambda s, b: 0.10 + 0.01 * s)
    )
    assert partly.loc["C1", "verdict"] == "partly"  # 10, 11, 12 %: [8.5, 13.5] %, above 5 %, below 15 %
    finals = {0: 0.02, 1: 0.10, 2: 0.04}  # mean 5.3 %, sd 4.2: the t interval [-5, 16] % straddles 5 %
    straddling = claims_of(fake_runs(np.full(20, 0.03), sft_final=lambda s, b: finals[s], sft_tail=lambda s, b: finals[s]))
    assert straddling.loc["C1", "verdict"] == "inconclusive"
    assert float(straddling.loc["C1", "estimate"]) == pytest.approx(np.mean(list(finals.values())), abs=1e-4)


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_one_or_two_seeds_decide_nothing(seeds):
    claims = claims_of(fake_runs(drift_by_seed, sft_tail=0.02, seeds=seeds))
    assert set(claims["verdict"]) == {"inconclusive"}
    assert set(claims["n"]) == {str(len(seeds))}


def test_final_ood_table():
    table = final_ood_table(fake_runs(np.full(10, 0.4)))
    assert list(table["run"]) == ["SFT", "DPO β=0.01", "DPO β=0.1"]
    assert table["final_ood_mean"].iloc[1] == pytest.approx(0.4)


def test_c1_uses_the_same_final_as_the_table():
    """With 20 evaluations the page's 'final' is the mean of the last two: 3 % and 3 % gives
    reproduced; 3 % after 50 % is 26.5 %, not reproduced (the last evaluation alone said reproduced)."""
    assert verdicts(fake_runs(np.full(20, 0.03), sft_final=0.03, sft_tail=0.03))["C1"] == "reproduced"
    runs = fake_runs(np.full(20, 0.03), sft_final=0.03)
    claims = claims_of(runs)
    assert claims.loc["C1", "verdict"] == "not reproduced"
    assert f"{100 * final_ood_table(runs)['final_ood_mean'].iloc[0]:.0f} ± 0 %" in claims.loc["C1", "our_value"]  # one 'final'
