"""C11: does CHES identify the training pairs that cause likelihood displacement (Razin et al.,
arXiv 2410.08847, §4; the talk's 'Identifying sources')? Each pair of a fixed random subset of
the number-line training pairs is trained on alone from the SFT reference; its displacement
is ranked against CHES, edit-distance similarity and hidden-embedding cosine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import PairSet, make_pairs
from dpo_toolkit.core.evidence import Check, mean_interval
from dpo_toolkit.core.stats import spearman
from dpo_toolkit.recipes.sft_then_dpo import sft_references
from dpo_toolkit.studies.ches.measures import ches, edit_similarity, hidden_cosine, single_pair_displacement


def pair_subset(data_cfg: DataConfig, n_pairs: int, seed: int) -> PairSet:
    """n_pairs training pairs drawn without replacement by seed, in their original order."""
    train, _ = make_pairs(data_cfg)
    if not 1 <= n_pairs <= len(train):
        raise ValueError(f"n_pairs must be in [1, {len(train)}] (the training pairs), got {n_pairs}")
    index = np.sort(np.random.default_rng(seed).choice(len(train), n_pairs, replace=False))
    return PairSet(train.prompt[index], train.chosen[index], train.rejected[index])


def score_pairs(
    data_cfg: DataConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: TrainConfig,
    beta: float,
    dpo_steps: int,
    pairs: PairSet,
    seeds: Sequence[int],
    cache_dir: str | Path,
    device: str = "cpu",
    sgd_cfg: TrainConfig | None = None,
) -> pd.DataFrame:
    """For each seed's SFT reference (``sft_references``, cached) and each pair: its
    displacement when DPO (dpo_cfg's optimizer, β, dpo_steps steps) trains on it alone, the same
    under plain SGD (sgd_cfg, when given: column displacement_sgd), and its three scores. One row
    per (seed, pair): seed, prompt, chosen, rejected, displacement(s), and one column per measure
    of MEASURES. Every model trains and is scored on `device`."""
    frames = []
    references = sft_references(data_cfg, ModelConfig(), sft_cfg, EvalConfig(), seeds, Path(cache_dir), device=device)
    for seed, (reference, _) in zip(seeds, references, strict=True):
        sgd = {"displacement_sgd": single_pair_displacement(reference, pairs, sgd_cfg, beta, dpo_steps)} if sgd_cfg else {}
        frames.append(pd.DataFrame({
            "seed": seed, "prompt": pairs.prompt, "chosen": pairs.chosen, "rejected": pairs.rejected,
            "displacement": single_pair_displacement(reference, pairs, dpo_cfg, beta, dpo_steps), **sgd,
            "ches": ches(reference, pairs).numpy(),
            "edit": [edit_similarity(str(a), str(b)) for a, b in zip(pairs.chosen, pairs.rejected, strict=True)],
            "cosine": hidden_cosine(reference, pairs).numpy(),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


MEASURES = {"ches": "CHES", "edit": "edit-distance similarity", "cosine": "hidden-embedding cosine"}
RANK_CORRELATION = 0.3  # C11: Spearman(score, −displacement) that counts as "identifies"
MIN_DISPLACED = 0.1
"""C11's precondition: there are displacing pairs to identify, i.e. π(y+) fell for at least
this share of the scored pairs (one in ten)."""


SGD_DISPLACING = 0.2
"""C11's precondition where the pairs were also trained by plain SGD: at least this share of single
pairs (one in five) displace under SGD. CHES is a gradient-flow quantity (Razin et al. §4), so C11
is decided on the displacement plain gradient descent produces; Adam's, measured beside it, is an
optimizer effect the theory does not describe: reported, never deciding."""


def theory_arm(table: pd.DataFrame, fallback: float = MIN_DISPLACED) -> tuple[pd.DataFrame, str, float]:
    """(the rows with the displacement C11 is decided on, the optimizer's name, the precondition's
    threshold): plain SGD's with the head frozen (displacement_sgd_frozen: W fixed, h trained, the
    setting CHES is derived in) where the table has it, else plain SGD's (displacement_sgd), both
    with SGD_DISPLACING; else the chapter's optimizer's (`fallback`)."""
    if "displacement_sgd_frozen" in table:
        return table.assign(displacement=table["displacement_sgd_frozen"]), "plain SGD, head frozen", SGD_DISPLACING
    if "displacement_sgd" in table:
        return table.assign(displacement=table["displacement_sgd"]), "plain SGD", SGD_DISPLACING
    return table, "the chapter's optimizer", fallback


def other_optimizer(table: pd.DataFrame, names: Mapping[str, str]) -> str:
    """'; under Adam (…)': the chapter optimizer's ρ and displaced share, where C11 is decided on SGD."""
    if "displacement_sgd" not in table:
        return ""
    rho = rank_correlations(table, names)
    trained = ""
    if "displacement_sgd_frozen" in table:
        fell = (table["displacement_sgd"] < 0).groupby(table["seed"]).mean().mean()
        trained = f"; under plain SGD with the head trained π(y+) fell for {fell:.0%} of pairs"
    return (
        f"{trained}; under the chapter's optimizer (an optimizer effect, not deciding): {rank_summary(rho, names)}, "
        f"π(y+) fell for {displaced_shares(table).mean():.0%} of pairs"
    )


def displaced_shares(table: pd.DataFrame) -> pd.Series:
    """Per seed, the share of the scored pairs whose π(y+) fell (displacement < 0): the
    precondition of C11, C11-phrases and C12 (a share per replicate, since the pairs of one seed
    share its reference and are not independent)."""
    return (table["displacement"] < 0).groupby(table["seed"]).mean()


def rank_correlations(table: pd.DataFrame, scores) -> pd.DataFrame:
    """Spearman(score, −displacement) of each of `scores`, per seed: one row per seed. A constant
    score (or displacement) ranks nothing, so its ρ, undefined, is read as 0."""
    return pd.DataFrame(
        {s: table.groupby("seed").apply(lambda g, s=s: spearman(g[s], -g["displacement"]), include_groups=False)
         for s in scores}
    ).fillna(0.0)  # fmt: skip


CLAIMS = {
    "C11": ClaimText(
        "The CHES score identifies the training pairs that cause likelihood displacement; "
        "edit-distance and hidden-embedding similarity do not.",
        "CHES ranks displacing pairs first; the alternatives do not",
        "talk, 'Identifying sources'",
    ),
}
"""What C11 says and what the paper reports; ``ches_claims`` adds what the runs show."""


def rank_summary(rho: pd.DataFrame, names: Mapping[str, str]) -> str:
    """'CHES +0.41 ± 0.05; …': each score's Spearman ρ (a column of `rho`, one row per seed),
    mean ± sd (ddof 0) over seeds, named by `names`, in its order."""
    mean, spread = rho.mean(), rho.std(ddof=0)
    return "; ".join(f"{names[s]} {mean[s]:+.2f} ± {spread[s]:.2f}" for s in names)


def claim_table(text: Mapping[str, ClaimText], claim_id: str, our_value: str, decision: dict, precondition: str) -> pd.DataFrame:
    """The claims table of one claim decided on replicates: its statement and paper value from
    `text`, `our_value`, the fields of ``decide`` (`decision`) and the precondition's sentence."""
    row = {"claim_id": claim_id, "our_value": our_value, **decision, "precondition": precondition}
    return claims_frame([row], text=text)


def ches_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The C11 claims table from one row per (seed, pair) with columns seed, displacement
    (``single_pair_displacement``) and one column per measure of MEASURES.

    Per seed (a replicate: its SFT reference): each measure's Spearman ρ with −displacement.
    Reproduced when CHES's ρ is ≥ RANK_CORRELATION and CHES ranks first: ρ(CHES) − ρ(m) ≥ 0 for
    each alternative m (the old 'highest mean ρ', now one interval per alternative); partly when
    CHES's ρ is ≥ RANK_CORRELATION without ranking first. Each check is an interval over seeds
    (``mean_interval``). Precondition: the per-seed share of pairs whose π(y+) fell is
    ≥ MIN_DISPLACED."""
    decided, optimizer, needed = theory_arm(table)
    rho = rank_correlations(decided, MEASURES)
    strong = Check(f"Spearman(CHES, −Δ log π(y+)), {optimizer}", mean_interval(rho["ches"]), RANK_CORRELATION)
    first = [Check(f"ρ(CHES) − ρ({MEASURES[m]})", mean_interval(rho["ches"] - rho[m]), 0.0) for m in MEASURES if m != "ches"]
    shares = displaced_shares(decided)
    enough = Check(f"share of scored pairs whose π(y+) fell under {optimizer}", mean_interval(shares), needed)
    n_seeds = table["seed"].nunique()
    ours = (
        f"{optimizer}: Spearman(score, −Δ log π(y+)) over {len(table) // n_seeds} pairs, "
        f"mean ± sd over {n_seeds} seeds: {rank_summary(rho, MEASURES)}; π(y+) fell for {shares.mean():.0%} of pairs"
        + other_optimizer(table, MEASURES)
    )
    decision = decide([strong, *first], part=[strong], precondition=enough)  # partly: CHES identifies them
    precondition = f"π(y+) falls under {optimizer} for ≥ {needed:.0%} of the scored pairs (mean over seeds): {shares.mean():.0%}"
    return claim_table(CLAIMS, "C11", ours, decision, precondition)
