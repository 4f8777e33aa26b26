import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.core.stats import spearman
from dpo_toolkit.studies.kl_sweep import beta_grid, kl_band, least_ood_checkpoints, sweep_claims, u_shape, u_shape_bins


def test_beta_grid_is_log_spaced():
    grid = beta_grid(30, 1e-2, 1.0)
    assert len(grid) == 30 and grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log(grid)), np.log(100) / 29)
    with pytest.raises(ValueError, match="n_betas"):
        beta_grid(0, 0.01, 1)
    with pytest.raises(ValueError, match="beta_min"):
        beta_grid(3, 1.0, 0.1)


def test_spearman_against_hand_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # ranks d² = 0,1,1 → 1 − 6·2/(3·8)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def fake_sweep(u_shaped=True, seeds=(0, 1, 2), bottoms=None, kl_scale=1.0):
    """KL = kl_scale · step · 0.02 / β^0.5; OOD a U in log KL with its bottom at `bottoms[i]` for the
    i-th seed (default 0.315, 0.35, 0.385: seeds that differ a little), or flat then rising."""
    bottoms = bottoms or [0.35 * (0.9 + 0.1 * i) for i in range(len(seeds))]
    rows = []
    for seed, bottom in zip(seeds, bottoms, strict=True):
        for beta in beta_grid(10, 0.01, 1.0):
            for step in range(0, 31):
                kl = kl_scale * step * 0.02 / beta**0.5
                u = np.log(kl) - np.log(bottom) if kl > 0 else -3.0
                ood = 0.05 + 0.05 * u**2 if u_shaped else 0.05 + 0.1 * max(u, 0)
                rows.append({"seed": seed, "beta": beta, "step": step, "kl": kl, "ood_rate": min(ood, 1.0)})
    return pd.DataFrame(rows)


def claims_of(sweep):
    return sweep_claims(sweep).set_index("claim_id")


def verdicts(sweep):
    return claims_of(sweep)["verdict"].to_dict()


def test_least_ood_checkpoints_skip_step_zero_and_take_the_earliest_tie():
    df = pd.DataFrame({"seed": 0, "beta": 0.1, "step": [0, 1, 2, 3], "kl": [0, 0.1, 0.2, 0.3], "ood_rate": [0.0, 0.2, 0.1, 0.1]})
    best = least_ood_checkpoints(df)
    assert best["step"].tolist() == [2] and best["kl"].tolist() == [0.2]


def test_u_shape_bins_and_arms():
    kl = np.geomspace(0.01, 10, 100)
    bins = u_shape_bins(kl, (np.log(kl) - np.log(0.3)) ** 2, n_bins=10)
    assert len(bins) == 10 and bins["kl"].is_monotonic_increasing
    fit = u_shape(bins)
    assert fit["interior"] and 0.15 < fit["bottom_kl"] < 0.6 and fit["left_rise"] > 1 and fit["right_rise"] > 1
    hockey = u_shape(u_shape_bins(kl, np.maximum(np.log(kl), 0), n_bins=10))  # flat, then rising
    assert hockey["left_rise"] == pytest.approx(0) and hockey["right_rise"] > 1
    assert u_shape_bins(np.array([0.0, 1.0, 2.0]), np.array([9.0, 0.0, 1.0]), n_bins=2)["ood_rate"].tolist() == [0.0, 1.0]


def by_hand(sweep):
    """Per seed, the C5 and C6 quantities computed here from the helpers, seed by seed."""
    tightness, depth = [], []
    for _, runs in sweep.groupby("seed"):
        optima = least_ood_checkpoints(runs)
        lo, hi = kl_band(optima[optima["ood_varies"]])
        tightness.append(lo / hi)
        dpo = runs[runs["step"] > 0]
        fit = u_shape(u_shape_bins(dpo["kl"].to_numpy(), dpo["ood_rate"].to_numpy()))
        depth.append(min(fit["left_rise"], fit["right_rise"]))
    return np.array(tightness), np.array(depth)


def test_claims_reproduced_on_the_papers_picture():
    sweep = fake_sweep()
    lo, hi = kl_band(least_ood_checkpoints(sweep))
    assert 0.2 < lo <= hi < 0.6
    claims = claims_of(sweep)
    assert claims["verdict"].to_dict() == {"C4": "reproduced", "C5": "reproduced", "C6": "reproduced"}
    assert claims["n"].tolist() == ["3", "3", "3"]
    tightness, depth = by_hand(sweep)
    assert np.ptp(tightness) > 0.05 and np.ptp(depth) > 0.01  # the seeds differ: the intervals are not points
    assert float(claims.loc["C5", "estimate"]) == pytest.approx(tightness.mean(), rel=1e-3)  # the deciding check: tightness
    assert float(claims.loc["C5", "ci_low"]) > 0.5 and claims.loc["C5", "threshold"] == "0.5"
    assert float(claims.loc["C6", "estimate"]) == pytest.approx(depth.mean(), rel=1e-3)
    assert float(claims.loc["C6", "ci_low"]) > 0.05
    assert float(claims.loc["C4", "estimate"]) == 1.0  # every β grows in every seed


def test_claims_not_reproduced_when_ood_only_rises():
    claims = claims_of(fake_sweep(u_shaped=False))
    assert claims.loc["C6", "verdict"] == "partly"  # one arm only: the shallower arm is 0 in every seed
    assert float(claims.loc["C6", "estimate"]) == 0.0
    # optima pile up at the first checkpoints, with spread-out KL: tightness 0.158 in every seed
    assert claims.loc["C5", "verdict"] == "not reproduced"
    assert float(claims.loc["C5", "estimate"]) == pytest.approx(0.1584, abs=1e-3)


def test_one_band_away_from_the_papers_is_partly_and_bands_in_different_places_are_inconclusive():
    far = claims_of(fake_sweep(bottoms=[3.2, 3.5, 3.8], kl_scale=10.0))
    assert far.loc["C5", "verdict"] == "partly"  # tight bands at KL ≈ 3–4, clear of 0.25–0.5
    assert float(far.loc["C5", "ci_low"]) > 0.5 and far.loc["C5", "threshold"] == "0.5"  # the low end, ≤ 0.5 claimed
    apart = claims_of(fake_sweep(bottoms=[0.3, 0.35, 0.9]))  # each seed tight, the third elsewhere
    assert apart.loc["C5", "verdict"] == "inconclusive"
    assert "band's low end" in apart.loc["C5", "our_value"] and "straddles" in apart.loc["C5", "our_value"]


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_one_or_two_seeds_decide_nothing(seeds):
    claims = claims_of(fake_sweep(seeds=seeds))
    assert set(claims["verdict"]) == {"inconclusive"}
    assert set(claims["n"]) == {str(len(seeds))}
    assert "fewer than 3 replicates" in claims.loc["C4", "our_value"]


def kl_sweep_by(kl, seeds=(0, 1, 2), betas=(0.1, 0.3, 1.0), steps=4):
    """A hand-made sweep: kl(seed, β, step), OOD rate 0.1 everywhere."""
    rows = [
        {"seed": s, "beta": b, "step": t, "kl": kl(s, b, t), "ood_rate": 0.1} for s in seeds for b in betas for t in range(steps)
    ]
    return pd.DataFrame(rows)


def test_c4_is_decided_per_seed():
    assert verdicts(kl_sweep_by(lambda s, b, t: t / b))["C4"] == "reproduced"
    # KL grows with β in every seed: Spearman(β, final KL) = +1 three times, a point interval above −0.8
    rising = claims_of(kl_sweep_by(lambda s, b, t: t * b)).loc["C4"]
    assert rising["verdict"] == "partly" and float(rising["estimate"]) == 1.0
    # seed 1 alone grows with β: Spearman −1, +1, −1, mean −1/3 with an interval over −0.8 and beyond
    mixed = claims_of(kl_sweep_by(lambda s, b, t: t * b if s == 1 else t / b)).loc["C4"]
    assert mixed["verdict"] == "inconclusive" and float(mixed["estimate"]) == pytest.approx(-1 / 3, abs=1e-3)
    # in seed 0 the KL of β = 1 never moves: grow shares 2/3, 1, 1, mean 0.889 (t interval 0.41–1.37)
    stuck = claims_of(kl_sweep_by(lambda s, b, t: 0.0 if (s, b) == (0, 1.0) else t / b)).loc["C4"]
    assert stuck["verdict"] == "inconclusive" and float(stuck["estimate"]) == pytest.approx(8 / 9, abs=1e-3)
    # one β: no fall can be measured (read as 0), the growth alone holds
    one = claims_of(kl_sweep_by(lambda s, b, t: t / b, betas=(0.1,))).loc["C4"]
    assert one["verdict"] == "partly" and float(one["estimate"]) == 0.0


SCRIPT = """
import sys
from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo
df = run_sft_then_dpo(
    DataConfig(prompt_min=1, prompt_max=30, window=2, test_fraction=0.3),
    ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=8),
    TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=16, grad_clip=None, n_evals=2),
    DPOConfig(optimizer="rmsprop", lr=1e-3, weight_decay=0.0, epochs=4, batch_size=4, grad_clip=None, n_evals=40),
    EvalConfig(kl_samples=2), betas=[0.05, 0.5, 2.0], seeds=[0], cache_dir=sys.argv[1], progress=False)
df.to_csv(sys.argv[2], index=False)
"""


def test_sweep_killed_midway_resumes_to_identical_results(tmp_path):
    run = [sys.executable, "-c", SCRIPT]
    subprocess.run([*run, str(tmp_path / "a"), str(tmp_path / "a.csv")], check=True, timeout=300)
    proc = subprocess.Popen([*run, str(tmp_path / "b"), str(tmp_path / "b.csv")])
    deadline = time.time() + 120
    # kill as soon as DPO has checkpointed an evaluation (not an SFT checkpoint: between SFT's end, which
    # removes its checkpoint, and DPO's first one there is none, and a loaded machine may sit in that gap)
    while not list((tmp_path / "b").glob("dpo*.ckpt")) and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL
    proc.wait()
    assert not (tmp_path / "b.csv").exists(), "the sweep finished before it could be killed"
    assert list((tmp_path / "b").glob("dpo*.ckpt")), "no DPO checkpoint was left to resume from"
    subprocess.run([*run, str(tmp_path / "b"), str(tmp_path / "b.csv")], check=True, timeout=300)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))


def test_c5_is_untestable_when_the_ood_rate_never_changes_along_a_run():
    """Greedy OOD 0 at every checkpoint: every 'least-OOD checkpoint' is a tie-break at the first
    one, whose KLs can share a band by accident (the old rule said partly or better)."""
    flat = fake_sweep().assign(ood_rate=0.0)
    claims = sweep_claims(flat).set_index("claim_id")
    assert claims.loc["C5", "verdict"] == "untestable here"
    assert "0 ± 0 % over 3 seeds" in claims.loc["C5", "precondition"]
    half = fake_sweep()
    half.loc[(half["seed"] == 0) & (half["beta"] > 0.1), "ood_rate"] = 0.0  # seed 0: 5 of 10 β runs vary
    claims = claims_of(half)  # shares 0.5, 1, 1: mean 0.83, t interval [0.12, 1.55] around 0.5
    assert claims.loc["C5", "verdict"] == "inconclusive"
    assert "[0.116, 1.55]" in claims.loc["C5", "our_value"]
    assert (
        "precondition's interval straddles" in claims.loc["C5", "our_value"] and "83 ± 29 %" in claims.loc["C5", "precondition"]
    )
    assert least_ood_checkpoints(fake_sweep())["ood_varies"].all()
