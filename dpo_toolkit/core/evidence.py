"""Verdicts as statistical statements: an interval over independent replicates, read against a
threshold fixed before any run.

A *replicate* is everything one training seed sets (the reference model, the initialisation, the
data order); runs that share a seed are not independent. A claim's quantity is computed once per
replicate and summarised by

- ``mean_interval``: the mean over replicates with a 95 % interval, the union of the BCa
  bootstrap interval (``scipy.stats.bootstrap``; the practice of Agarwal et al., *Deep RL at the
  Edge of the Statistical Precipice*, NeurIPS 2021) and Student's t interval. The bootstrap makes
  no assumption on the shape of the replicates' distribution but is too narrow on a handful of
  replicates (with three it hardly exceeds their range); the t interval holds its coverage there
  under normality. Their union keeps whichever is more cautious: t on few replicates, the
  bootstrap where the replicates are many and skewed;
- ``ratio_interval``: a ratio of two means over paired replicates (a share of a gap closed);
- ``share_interval``: a share of independent trials (k of m) with its 95 % Wilson interval, for
  claims about a proportion (drift fraction, displaced share); ``clustered_share_interval`` where
  trials share seeds (several runs per seed), at the effective number of trials Kish's design
  effect allows.

A ``Check`` reads an interval against a threshold: it *holds* when the whole interval is on the
claim's side, *fails* when the whole interval is on the other side, and is *undecided* when the
interval straddles the threshold or rests on fewer than ``MIN_REPLICATES`` replicates. The
verdict ladder (``claims.decide``) reads checks, never a single run against a threshold."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_REPLICATES = 3
"""Fewer independent replicates decide nothing: a claim read on one or two seeds is inconclusive
(its interval is too wide to trust, and a change of float order can move a single run across any
threshold), whatever its runs show."""
RESAMPLES = 4999  # bootstrap resamples; the seed below makes the interval a function of the data alone
_BOOTSTRAP_SEED = 0
_Z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))


@dataclass(frozen=True)
class Interval:
    """An estimate from `n` independent replicates with its 95 % interval [low, high]; `spread` is
    the replicates' standard deviation (of a mean) or √(p(1−p)·trials/n) (of a share), what
    ``replicates_needed`` scales."""

    n: int
    estimate: float
    low: float
    high: float
    spread: float = float("nan")

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}] (n={self.n})"


def mean_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """The mean of one value per replicate, with its 95 % interval (or one at `confidence`, e.g. a
    Bonferroni level 1 − 0.05/k for k cells read at once): the union of the BCa bootstrap interval
    and Student's t interval (module docstring).

    Equal values give a point interval; one value gives (−∞, ∞): a single run bounds nothing, and
    so does a replicate without a value (NaN or ±inf, e.g. a ratio whose denominator vanished): the
    interval is then (−∞, ∞) over every replicate, never the others' with one silently dropped.
    Where BCa is undefined (a resample distribution without spread), the percentile interval."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("mean_interval needs one value per replicate; got none")
    if not np.isfinite(x).all():
        finite = x[np.isfinite(x)]
        return Interval(int(x.size), float(finite.mean()) if finite.size else math.nan, -math.inf, math.inf)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(1, mean, -math.inf, math.inf)
    spread = float(x.std(ddof=1))
    if np.ptp(x) == 0:
        return Interval(int(x.size), float(x[0]), float(x[0]), float(x[0]), 0.0)
    if not 0 < confidence < 1:
        raise ValueError(f"mean_interval: confidence must be in (0, 1); got {confidence}")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * spread / math.sqrt(x.size)  # Student's t
    ci = None
    for method in ("BCa", "percentile"):
        rng = np.random.default_rng(_BOOTSTRAP_SEED)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # BCa undefined: the percentile interval below
            result = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method=method, rng=rng)
        ci = result.confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return Interval(int(x.size), mean, min(float(ci.low), mean - half), max(float(ci.high), mean + half), spread)


def wilson_interval(share: float, trials: float) -> tuple[float, float]:
    """The 95 % Wilson score interval of a share observed over `trials` independent trials (> 0, not
    necessarily whole: an effective number of trials, ``clustered_share_interval``)."""
    centre = (share + _Z**2 / (2 * trials)) / (1 + _Z**2 / trials)
    half = _Z / (1 + _Z**2 / trials) * math.sqrt(share * (1 - share) / trials + _Z**2 / (4 * trials**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def share_interval(successes: int, trials: int, replicates: int | None = None) -> Interval:
    """A share `successes` of `trials` independent trials with its 95 % Wilson interval. `replicates`
    is the number of independent seeds behind the trials, the `n` that ``MIN_REPLICATES`` reads
    (default: every trial is its own replicate). Trials that share a seed are not independent:
    give them to ``clustered_share_interval``."""
    if not (0 <= successes <= trials) or trials < 1:
        raise ValueError(f"share_interval needs 0 ≤ successes ≤ trials and trials ≥ 1; got {successes} of {trials}")
    p = successes / trials
    n = trials if replicates is None else int(replicates)
    return Interval(n, p, *wilson_interval(p, trials), math.sqrt(p * (1 - p) * trials / max(n, 1)))


def clustered_share_interval(outcomes, clusters) -> Interval:
    """The share of true `outcomes` (one per trial) whose trials come in `clusters` (the seed behind
    each trial: trials of one seed share its reference, initialisation and data order), with its
    95 % Wilson interval at the effective number of trials n_eff = trials / deff. deff is Kish's
    design effect 1 + (m̄ − 1)·ICC, m̄ the mean cluster size and ICC the one-way ANOVA intraclass
    correlation of the outcomes, clipped to [0, 1]; where it cannot be estimated (one cluster, or
    no variance at all) it is taken as 1, so n_eff lies between the number of clusters and of trials.
    The Interval's n is the number of clusters (the independent replicates)."""
    y = np.asarray(outcomes, dtype=float).ravel()
    labels = np.asarray(clusters).ravel()
    if y.size == 0 or y.shape != labels.shape or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"clustered_share_interval needs one 0/1 outcome per trial and one cluster per trial; got "
                         f"{y.size} outcomes and {labels.size} clusters")  # fmt: skip
    _, cluster = np.unique(labels, return_inverse=True)
    k, trials, p = int(cluster.max()) + 1, y.size, float(y.mean())
    sizes, means = np.bincount(cluster), np.bincount(cluster, weights=y) / np.bincount(cluster)
    icc = 1.0
    if 1 < k < trials:
        between = float((sizes * (means - p) ** 2).sum()) / (k - 1)  # MSB
        within = float((sizes * means * (1 - means)).sum()) / (trials - k)  # MSW (0/1 outcomes)
        m0 = (trials - float((sizes**2).sum()) / trials) / (k - 1)
        if between + (m0 - 1) * within > 0:
            icc = min(1.0, max(0.0, (between - within) / (between + (m0 - 1) * within)))
    n_eff = trials / (1 + (trials / k - 1) * icc)
    return Interval(k, p, *wilson_interval(p, n_eff), math.sqrt(p * (1 - p) * k / n_eff))


def ratio_interval(numerators, denominators) -> Interval:
    """A ratio of means over replicates, mean(a) / mean(b), from paired values (a_i, b_i), one pair
    per replicate, with its 95 % interval: the union of the paired BCa bootstrap interval and the
    delta-method t interval R ± t·sd(a − R·b) / (√n·|mean(b)|) (as ``mean_interval`` unions BCa
    with Student's t, for the same reason). A ratio of means, not a mean of per-replicate ratios:
    a replicate whose denominator is near zero would make its own ratio explode.

    (−∞, ∞) when the denominator's own interval (``mean_interval``) reaches zero (the ratio is then
    unbounded), on one replicate, or when a value is missing."""
    a, b = (np.asarray(x, dtype=float).ravel() for x in (numerators, denominators))
    if a.size == 0 or a.shape != b.shape:
        raise ValueError(f"ratio_interval needs one (numerator, denominator) pair per replicate; got {a.size} and {b.size}")
    n = int(a.size)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or n == 1:
        return Interval(n, math.nan if not np.isfinite(b).all() or b.mean() == 0 else float(a.mean() / b.mean()),
                        -math.inf, math.inf)  # fmt: skip
    denominator = mean_interval(b)
    if denominator.low <= 0 <= denominator.high:
        return Interval(n, float(a.mean() / b.mean()) if b.mean() != 0 else math.nan, -math.inf, math.inf)
    ratio = float(a.mean() / b.mean())
    residual = a - ratio * b
    spread = float(residual.std(ddof=1)) / abs(float(b.mean()))  # sd of one replicate's contribution to R
    if np.ptp(residual) == 0:
        return Interval(n, ratio, ratio, ratio, 0.0)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * spread / math.sqrt(n)  # delta method
    ci = None
    for method in ("BCa", "percentile"):
        rng = np.random.default_rng(_BOOTSTRAP_SEED)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            result = stats.bootstrap((a, b), lambda x, y: x.mean() / y.mean(), paired=True, confidence_level=CONFIDENCE,
                                     n_resamples=RESAMPLES, method=method, rng=rng)  # fmt: skip
        ci = result.confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return Interval(n, ratio, min(float(ci.low), ratio - half), max(float(ci.high), ratio + half), spread)


@dataclass(frozen=True)
class Check:
    """One threshold read on an interval: the claim's side is ``interval ≥ threshold`` (above) or
    ``interval ≤ threshold`` (not above). `name` says what was measured, for the claims table."""

    name: str
    interval: Interval
    threshold: float
    above: bool = True

    @property
    def outcome(self) -> bool | None:
        """True (the whole interval on the claim's side), False (the whole interval on the other
        side) or None (it straddles the threshold, or rests on fewer than MIN_REPLICATES)."""
        i = self.interval
        if i.n < MIN_REPLICATES:
            return None
        if self.above:
            return True if i.low >= self.threshold else False if i.high < self.threshold else None
        return True if i.high <= self.threshold else False if i.low > self.threshold else None

    def replicates_needed(self) -> int | None:
        """About how many replicates would put the interval clear of the threshold at the observed
        spread (normal approximation, ⌈(z·spread / |estimate − threshold|)²⌉, at least
        MIN_REPLICATES); None when the estimate sits on the threshold or no spread is known."""
        i = self.interval
        gap = abs(i.estimate - self.threshold)
        if gap == 0 or not math.isfinite(i.spread):
            return None
        return max(MIN_REPLICATES, math.ceil((_Z * i.spread / gap) ** 2))

    def describe(self) -> str:
        side = "≥" if self.above else "≤"
        i = self.interval
        return (
            f"{self.name} {i.estimate:.3g}, 95 % CI [{i.low:.3g}, {i.high:.3g}] over {i.n} "
            f"replicate{'s' if i.n != 1 else ''} (claim: {side} {self.threshold:g})"
        )


def either(*groups: list[Check]) -> list[Check]:
    """'At least one of these groups of checks holds', as a group ``claims.decide`` can read: the
    first group that holds, else the first still undecided, else the first (all fail). Its
    conjunction is the three-valued OR of the groups' conjunctions."""
    outcomes = [conjunction(g)[0] for g in groups]
    for wanted in (True, None):
        for group, outcome in zip(groups, outcomes, strict=True):
            if outcome is wanted:
                return group
    return groups[0]


def conjunction(checks: list[Check]) -> tuple[bool | None, Check]:
    """All of `checks` at once: (True, the first) when every one holds; (False, the first that
    fails) when any fails; else (None, the first undecided). The returned check is the one that
    decides, the one a claims table reports."""
    if not checks:
        raise ValueError("conjunction needs at least one check")
    failed = [c for c in checks if c.outcome is False]
    if failed:
        return False, failed[0]
    undecided = [c for c in checks if c.outcome is None]
    if undecided:
        return None, undecided[0]
    return True, checks[0]
