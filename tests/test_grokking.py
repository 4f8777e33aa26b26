import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.studies.grokking import almost_monotone_rise, final_ood_table, grokking_claims, relative_drawdown, tail_mean


def test_curve_helpers():
    assert tail_mean(np.arange(20), 0.1) == pytest.approx(18.5)
    assert relative_drawdown([0, 1, 2, 3]) == 0.0
    assert relative_drawdown([0, 4, 3, 4]) == pytest.approx(0.25)
    assert relative_drawdown([2, 2, 2]) == 0.0
    assert almost_monotone_rise([0, 1, 0.95, 2])
    assert not almost_monotone_rise([0, 2, 1, 2.1])
    assert not almost_monotone_rise([2, 1])


def fake_runs(ood_curve, sft_final=0.02, margin=None, seeds=(0, 1), betas=(0.01, 0.1), sft_tail=None):
    """SFT's OOD rate is 0.5 until its last evaluation, sft_final there (and sft_tail just before, if given)."""
    n = len(ood_curve)
    margin = np.linspace(0, 1, n) if margin is None else np.asarray(margin)
    sft_curve = np.full(n, 0.5)
    sft_curve[-1] = sft_final
    if sft_tail is not None:
        sft_curve[-2] = sft_tail
    rows = []
    for seed in seeds:
        for step in range(n):
            rows.append(
                {
                    "phase": "sft",
                    "beta": np.nan,
                    "seed": seed,
                    "step": step,
                    "ood_rate": sft_curve[step],
                }
            )
        for beta in betas:
            for step in range(n):
                rows.append(
                    {
                        "phase": "dpo",
                        "beta": beta,
                        "seed": seed,
                        "step": step,
                        "ood_rate": ood_curve[step],
                        "seq_error": 0.0,
                        "accuracy": min(1.0, 0.5 + step / n),
                        "margin": margin[step],
                        "kl": step,
                    }
                )
    return pd.DataFrame(rows)


def verdicts(runs):
    return dict(zip(*grokking_claims(runs)[["claim_id", "verdict"]].to_numpy().T, strict=True))


def test_the_papers_story_is_reproduced():
    drift = np.concatenate([np.linspace(0.02, 0.8, 10), np.full(10, 0.8)])
    assert verdicts(fake_runs(drift, sft_tail=0.02)) == {"C1": "reproduced", "C2": "reproduced", "C3": "reproduced"}


def test_no_drift_is_not_reproduced():
    flat = np.full(20, 0.03)
    v = verdicts(fake_runs(flat, sft_final=0.3))
    assert v == {"C1": "not reproduced", "C2": "not reproduced", "C3": "not reproduced"}


def test_recovery_breaks_c2_and_a_dip_breaks_c3():
    grok = np.concatenate([np.linspace(0.02, 0.9, 10), np.linspace(0.9, 0.1, 10)])
    dip = np.concatenate([np.linspace(0, 1, 10), np.linspace(0.5, 1.1, 10)])
    v = verdicts(fake_runs(grok, margin=dip))
    assert v["C2"] == "not reproduced"
    assert v["C3"] == "not reproduced"


def test_final_ood_table():
    table = final_ood_table(fake_runs(np.full(10, 0.4)))
    assert list(table["run"]) == ["SFT", "DPO β=0.01", "DPO β=0.1"]
    assert table["final_ood_mean"].iloc[1] == pytest.approx(0.4)


def test_c1_uses_the_same_final_as_the_table():
    """With 20 evaluations the page's 'final' is the mean of the last two: 3 % and 3 % gives
    reproduced; 3 % after 50 % is 26.5 %, not reproduced (the last evaluation alone said reproduced)."""
    assert verdicts(fake_runs(np.full(20, 0.03), sft_final=0.03, sft_tail=0.03))["C1"] == "reproduced"
    runs = fake_runs(np.full(20, 0.03), sft_final=0.03)
    claims = grokking_claims(runs).set_index("claim_id")
    assert claims.loc["C1", "verdict"] == "not reproduced"
    assert f"{100 * final_ood_table(runs)['final_ood_mean'].iloc[0]:.0f} %" in claims.loc["C1", "our_value"]  # one 'final'
