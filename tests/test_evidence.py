"""The statistics behind every verdict (core/evidence.py) and the ladder that reads them
(claims.decide): intervals against closed forms, the ladder on hand-made replicate sets."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dpo_toolkit.core.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    UNTESTABLE,
    claims_frame,
    decide,
)
from dpo_toolkit.core.evidence import (
    MIN_REPLICATES,
    Check,
    Interval,
    clustered_share_interval,
    either,
    mean_interval,
    ratio_interval,
    share_interval,
    wilson_interval,
)


def test_bootstrap_interval_matches_the_normal_closed_form_on_a_large_normal_sample():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=400)
    i = mean_interval(x)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert i.estimate == pytest.approx(x.mean())
    assert i.low == pytest.approx(x.mean() - half, abs=0.06 * half + 0.02)
    assert i.high == pytest.approx(x.mean() + half, abs=0.06 * half + 0.02)


def test_few_replicates_get_at_least_the_student_t_interval():
    x = [0.4, 0.7, 0.6, 0.9]  # the bootstrap alone would give about [0.5, 0.8]
    half = stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    i = mean_interval(x)
    assert i.low <= np.mean(x) - half + 1e-12 and i.high >= np.mean(x) + half - 1e-12
    assert i.low == pytest.approx(np.mean(x) - half)


def test_a_bonferroni_level_widens_the_interval_to_the_student_t_closed_form_at_that_level():
    x = [0.4, 0.7, 0.6, 0.9]
    level = 1 - 0.05 / 12  # twelve cells read at once
    half = stats.t.ppf(0.5 + level / 2, 3) * np.std(x, ddof=1) / 2
    wide = mean_interval(x, confidence=level)
    assert wide.low == pytest.approx(np.mean(x) - half) and wide.high == pytest.approx(np.mean(x) + half)
    assert wide.low < mean_interval(x).low
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_interval(x, confidence=1.0)


def test_interval_edge_cases_one_value_and_all_equal():
    one = mean_interval([0.7])
    assert (one.n, one.low, one.high) == (1, -math.inf, math.inf)
    equal = mean_interval([0.4, 0.4, 0.4])
    assert (equal.n, equal.low, equal.high, equal.spread) == (3, 0.4, 0.4, 0.0)
    missing = mean_interval([1.0, float("nan"), 2.0])  # a replicate without a value bounds nothing
    assert (missing.n, missing.estimate, missing.low, missing.high) == (3, 1.5, -math.inf, math.inf)
    with pytest.raises(ValueError, match="one value per replicate"):
        mean_interval([])


def test_wilson_interval_against_its_closed_form():
    k, m, z = 7, 20, stats.norm.ppf(0.975)
    p = k / m
    centre = (p + z**2 / (2 * m)) / (1 + z**2 / m)
    half = z / (1 + z**2 / m) * math.sqrt(p * (1 - p) / m + z**2 / (4 * m**2))
    i = share_interval(k, m)
    assert (i.low, i.high) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert i.n == m and share_interval(k, m, replicates=2).n == 2
    assert share_interval(0, 5).low == 0.0
    with pytest.raises(ValueError):
        share_interval(6, 5)


@pytest.mark.parametrize(("k", "m"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (17, 50), (1, 3)])
def test_share_interval_is_scipys_wilson_interval(k, m):
    ci = stats.binomtest(k, m).proportion_ci(confidence_level=0.95, method="wilson")
    i = share_interval(k, m)
    assert (i.low, i.high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_clustered_share_on_perfectly_clustered_trials_counts_each_cluster_once():
    """Every seed's runs agree (ICC 1): the interval is the Wilson interval over the seeds."""
    seeds = np.repeat(np.arange(6), 5)  # 6 seeds × 5 runs
    drifted = np.isin(seeds, [0, 3])  # two seeds drift in every run, four in none
    i = clustered_share_interval(drifted, seeds)
    j = share_interval(2, 6)
    assert i.n == 6 and i.estimate == pytest.approx(1 / 3)
    assert (i.low, i.high) == pytest.approx((j.low, j.high), rel=1e-12)


def test_clustered_share_without_correlation_counts_every_trial():
    """Every seed has the same share (between-seed variance 0, ICC clipped to 0): n_eff is the trials."""
    seeds = np.repeat(np.arange(5), 4)
    drifted = np.tile([True, False, False, False], 5)
    i, j = clustered_share_interval(drifted, seeds), share_interval(5, 20)
    assert i.n == 5 and (i.low, i.high) == pytest.approx((j.low, j.high), rel=1e-12)


def test_clustered_share_at_a_hand_computed_design_effect():
    """Seeds A = [1, 1, 1, 0] and B = [0, 0, 0, 0]: p = 3/8, MSB = 1.125, MSW = 0.125, m0 = 4, so
    ICC = (1.125 − 0.125) / (1.125 + 3 · 0.125) = 2/3, deff = 1 + 3 · 2/3 = 3 and n_eff = 8/3."""
    i = clustered_share_interval([1, 1, 1, 0, 0, 0, 0, 0], ["A"] * 4 + ["B"] * 4)
    z, p, n = stats.norm.ppf(0.975), 3 / 8, 8 / 3
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert i.n == 2 and (i.low, i.high) == pytest.approx((centre - half, centre + half), rel=1e-9)


def test_clustered_share_without_information_on_the_correlation_is_cautious():
    """No variance at all (0 of 50 runs), or one seed: ICC is taken as 1 (n_eff = the seeds)."""
    none = clustered_share_interval(np.zeros(50, bool), np.repeat(np.arange(10), 5))
    assert none.n == 10 and (none.low, none.high) == pytest.approx((0.0, share_interval(0, 10).high))
    one = clustered_share_interval([1, 0, 1, 1], [7, 7, 7, 7])
    assert one.n == 1 and one.estimate == 0.75 and (one.low, one.high) == pytest.approx(wilson_interval(0.75, 1.0))
    with pytest.raises(ValueError):
        clustered_share_interval([1, 0, 2], [0, 0, 1])


ABOVE = [0.9, 1.0, 1.1, 0.95, 1.05]  # clearly above 0.5
BELOW = [0.1, 0.0, 0.2, 0.15, 0.05]  # clearly below 0.5
STRADDLING = [0.1, 0.9, 0.2, 0.8, 0.5]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (ABOVE, REPRODUCED),
        (BELOW, NOT_REPRODUCED),
        (STRADDLING, INCONCLUSIVE),
        ([0.9], INCONCLUSIVE),  # n = 1
        ([0.9, 1.0], INCONCLUSIVE),  # n = 2: fewer than MIN_REPLICATES, however clear
        ([0.9, 0.9, 0.9], REPRODUCED),  # all equal, n = 3
        ([0.1, 0.1, 0.1], NOT_REPRODUCED),
    ],
)
def test_ladder_on_hand_made_replicate_sets(values, expected):
    row = decide(Check("x", mean_interval(values), 0.5))
    assert row["verdict"] == expected
    assert row["n"] == str(len(values))


def test_ladder_below_threshold_claims_partly_and_preconditions():
    low = Check("x", mean_interval(BELOW), 0.5, above=False)
    high = Check("x", mean_interval(ABOVE), 0.5, above=False)
    assert decide(low)["verdict"] == REPRODUCED
    assert decide(high, part=low)["verdict"] == PARTLY
    assert decide(high, part=high)["verdict"] == NOT_REPRODUCED
    assert decide(high, part=Check("y", mean_interval(STRADDLING), 0.5))["verdict"] == INCONCLUSIVE
    assert decide(low, precondition=False)["verdict"] == UNTESTABLE
    assert decide(low, precondition=Check("p", mean_interval(BELOW), 0.5))["verdict"] == UNTESTABLE
    assert decide(low, precondition=Check("p", mean_interval(STRADDLING), 0.5))["verdict"] == INCONCLUSIVE
    # too few replicates: inconclusive, the precondition not judged
    assert decide(Check("x", mean_interval([0.1, 0.2]), 0.5), precondition=False)["verdict"] == INCONCLUSIVE


def test_inconclusive_row_states_the_replicates_that_would_decide_it():
    row = decide(Check("gap", mean_interval([0.4, 0.7, 0.6, 0.9]), 0.5))
    assert row["verdict"] == INCONCLUSIVE
    sd, gap = np.std([0.4, 0.7, 0.6, 0.9], ddof=1), 0.65 - 0.5
    assert f"about {math.ceil((1.959964 * sd / gap) ** 2)} replicates" in row["decision"]


def test_either_is_the_three_valued_or_of_its_groups():
    def check(values):
        return [Check("x", mean_interval(values), 0.5)]

    held, failed, open_ = check(ABOVE), check(BELOW), check(STRADDLING)
    assert either(failed, held) is held and either(failed, open_) is open_ and either(failed, failed) is failed
    assert decide(failed, part=either(held, open_))["verdict"] == PARTLY
    assert decide(failed, part=either(failed, open_))["verdict"] == INCONCLUSIVE


def test_a_decisive_verdict_whose_interval_straddles_fails_validation():
    row = {"claim_id": "C1", "statement": "s", "paper_value": "p", "our_value": "o"}
    ok = decide(Check("x", mean_interval(ABOVE), 0.5))
    assert claims_frame([{**row, **ok}])["verdict"].tolist() == [REPRODUCED]
    forged = {**ok, "ci_low": "0.3"}  # a reproduced verdict on [0.3, ...] against 0.5
    with pytest.raises(ValueError, match="straddles"):
        claims_frame([{**row, **forged}])
    with pytest.raises(ValueError, match=str(MIN_REPLICATES)):
        claims_frame([{**row, **ok, "n": "2"}])
    inconclusive = decide(Check("x", mean_interval(STRADDLING), 0.5))
    table = claims_frame([{**row, **inconclusive}])
    assert "Decided: inconclusive" in table["our_value"].iloc[0]
    assert pd.Series(table.columns).isin(["n", "estimate", "ci_low", "ci_high", "threshold"]).sum() == 5


def test_ratio_interval_with_unit_denominators_is_the_t_interval_of_the_numerators():
    # b ≡ 1: R = mean(a) = 2, residual a − 2 = (−1, 0, 1), sd 1; t_{2, 0.975} = 4.3027 → half-width 4.3027/√3 = 2.4841
    interval = ratio_interval([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert interval.estimate == pytest.approx(2.0)
    assert interval.low <= 2 - 2.4841 + 1e-4 and interval.high >= 2 + 2.4841 - 1e-4
    assert interval.spread == pytest.approx(1.0)


def test_ratio_interval_is_a_ratio_of_means_not_a_mean_of_ratios():
    # the per-replicate ratios (500, 0.5, 0.5005, 0.25) average to 125; the ratio of means is 0.5 / 1.0
    a, b = [0.5, 0.5, 0.5, 0.5], [0.001, 1.0, 0.999, 2.0]
    assert ratio_interval(a, b).estimate == pytest.approx(2.0 / 4.0)
    assert ratio_interval([5.0, 5.5, 6.0], [10.0, 11.0, 12.0]) == Interval(3, 0.5, 0.5, 0.5, 0.0)  # proportional: a point


def test_ratio_interval_matches_the_delta_method_on_many_replicates():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.5, 1.5, 400)
    a = 0.3 * b + rng.normal(0, 0.05, 400)
    interval = ratio_interval(a, b)
    ratio = a.mean() / b.mean()
    half = 1.96 * (a - ratio * b).std(ddof=1) / (np.sqrt(400) * b.mean())  # closed form, normal approximation
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.1)
    assert interval.low < 0.3 < interval.high


def test_ratio_interval_is_unbounded_when_the_denominator_may_be_zero_or_a_value_is_missing():
    assert math.isinf(ratio_interval([0.1, 0.2, 0.1], [0.01, -0.02, 0.015]).low)
    assert math.isinf(ratio_interval([0.1, np.nan, 0.1], [1.0, 1.0, 1.0]).high)
    assert math.isinf(ratio_interval([0.1], [1.0]).low)
    with pytest.raises(ValueError, match="pair per replicate"):
        ratio_interval([0.1, 0.2], [1.0])
