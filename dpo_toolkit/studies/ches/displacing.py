"""C11 on a task where pairs displace (``phrases``): which score ranks the displacing pairs,
and the paper's protocol, DPO on the lowest-, median- and highest-CHES subsets of equal
size (Razin et al., arXiv 2410.08847, §4; the talk's 'Identifying sources')."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, decide
from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.data import Batch
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.evidence import Check, either, mean_interval
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.stats import spearman
from dpo_toolkit.studies.ches.full_batch import matched_claims, variant_rows
from dpo_toolkit.studies.ches.identify import (
    claim_table,
    displaced_shares,
    other_optimizer,
    rank_correlations,
    rank_summary,
    theory_arm,
)
from dpo_toolkit.studies.ches.measures import ches, edit_similarity, hidden_cosine, normalized_ches, single_pair_displacement
from dpo_toolkit.studies.ches.mitigation import STRICT, Variant, per_seed
from dpo_toolkit.studies.ches.phrases import (
    SUBSETS,
    PhraseConfig,
    chosen_ceilings,
    phrase_pairs,
    subset_displacement,
    subset_indices,
)
from dpo_toolkit.studies.ches.phrases import train_phrase_reference as fit_reference

SCORES = {
    "ches": "CHES",
    "ches_normalized": "length-normalised CHES",
    "edit": "edit-distance similarity",
    "cosine": "hidden-embedding cosine",
}
RANK_CORRELATION = 0.3  # as C11: Spearman(score, −Δ log π(y+)) that counts as "identifies"
MIN_DISPLACED = 0.2
"""The precondition: π(y+) falls for at least this share of the scored pairs (the issue's 'sizeable share')."""
SGD_ARM = "plain SGD, head frozen"  # C12-phrases' deciding arm: each kept pair's gradient as in all pairs
ADAM_ARM = "Adam"  # the chapter's single-pair optimizer, mean over the kept pairs: an optimizer arm

CLAIMS = {
    "C11-phrases": ClaimText(
        "[phrase task, pairs that displace] The CHES score identifies the training pairs that cause likelihood "
        "displacement; training on the highest-CHES pairs displaces most.",
        "CHES ranks displacing pairs first; the highest-CHES subset lowers log π(y+) most",
        "talk, 'Identifying sources'",
    ),
    "C12-phrases": ClaimText(
        "[phrase task, matched update budget] Removing the training pairs with the highest CHES mitigates likelihood "
        "displacement, and does so better than adding an SFT term to the loss.",
        "filtering mitigates; the SFT term helps less",
        "talk, 'Data filtering via CHES'",
    ),
}
"""What each claim says and what the paper reports; ``phrase_claims`` and
``phrase_mitigation_claims`` add what the runs show."""


def run_phrase_study(
    cfg: PhraseConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: TrainConfig,
    beta: float,
    steps: int,
    subset_fraction: float,
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
    runs: Sequence[Variant] = (),
    mitigation_steps: int = 1,
    sgd_cfg: TrainConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """For each seed: the reference (``train_phrase_reference``), every pair's displacement when
    DPO (dpo_cfg's optimizer, β, `steps` steps) trains on it alone and its four SCORES; then
    with `sgd_cfg`, every pair's displacement under plain SGD too, with the head trained
    (displacement_sgd) and frozen (displacement_sgd_frozen); then
    the protocol: DPO for `steps` full-batch steps on each of the lowest-, median- and
    highest-scoring subsets of round(subset_fraction · pairs) pairs, for every score (``_protocol_rows``).

    With `runs` (``mitigation.variants``): C12 on this task, each variant trained full-batch for
    `mitigation_steps` steps under dpo_cfg and, with `sgd_cfg`, under plain SGD (``_mitigation_rows``).

    Returns (pairs, protocol, mitigation): one row per (seed, pair) with statement, chosen,
    rejected, same_meaning, displacement and the scores; one row per (seed, score, subset) with
    its size, mean score, the mean change of log π(y+) over its preferred responses and that change
    as a fraction of its ceiling log(1/π_ref(y+)); one row per (arm, seed, variant) as
    ``_mitigation_rows``."""
    device = resolve_device(device)
    batch, table = phrase_pairs(cfg)
    size = round(subset_fraction * len(table))
    pairs, protocol, mitigation = [], [], []
    for seed in seeds:
        reference = build_model(cfg.model_config(), seed, device)
        fit_reference(cfg, reference, sft_cfg)
        reference.eval().requires_grad_(False)
        scores = _pair_scores(reference, batch, table)
        displacement = single_pair_displacement(reference, batch, dpo_cfg, beta, steps)
        sgd = {"displacement_sgd": single_pair_displacement(reference, batch, sgd_cfg, beta, steps),
               "displacement_sgd_frozen": single_pair_displacement(reference, batch, sgd_cfg, beta, steps,
                                                                   frozen_head=True)} if sgd_cfg else {}  # fmt: skip
        pairs.append(table.assign(seed=seed, displacement=displacement, **sgd, **scores))
        protocol += _protocol_rows(reference, batch, scores, size, dpo_cfg, beta, steps, seed)
        if runs:
            mitigation += _mitigation_rows(reference, batch, table, scores["ches"], runs, (dpo_cfg, sgd_cfg), beta,
                                           mitigation_steps, seed)  # fmt: skip
    return pd.concat(pairs, ignore_index=True), pd.DataFrame(protocol), pd.DataFrame(mitigation)


def _protocol_rows(reference, batch, scores: dict, size: int, dpo_cfg: TrainConfig, beta: float, steps: int, seed: int):
    """The paper's protocol for every score of SCORES (not CHES alone): DPO on the lowest-, median-
    and highest-scoring subsets of `size` pairs; one row per score and subset with its mean score,
    the mean change of log π(y+) of its preferred responses, their mean ceiling log(1/π_ref(y+)),
    and the change as a fraction of that ceiling (1: π(y+) reached 1; negative: it fell)."""
    ceilings = chosen_ceilings(reference, batch)
    rows = []
    for measure in SCORES:
        subsets = subset_indices(scores[measure], size)
        change = subset_displacement(reference, batch, subsets, dpo_cfg, beta, steps)
        rows += [{"seed": seed, "measure": measure, "subset": name, "size": size,
                  "mean_score": float(scores[measure][subsets[name]].mean()), "chosen_logp_change": change[name],
                  "ceiling": float(ceilings[subsets[name]].mean()),
                  "ceiling_fraction": change[name] / float(ceilings[subsets[name]].mean())} for name in SUBSETS]  # fmt: skip
    return rows


def _pair_scores(reference: Transformer, batch: Batch, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The four SCORES of every phrase pair (`batch`, described by `table`) under `reference`."""
    return {
        "ches": ches(reference, batch).numpy(),
        "ches_normalized": normalized_ches(reference, batch).numpy(),
        "edit": np.array([edit_similarity(a, b) for a, b in zip(table["chosen"], table["rejected"], strict=True)]),
        "cosine": hidden_cosine(reference, batch).numpy(),
    }


def _mitigation_rows(
    reference: Transformer,
    batch: Batch,
    table: pd.DataFrame,
    pair_ches: np.ndarray,
    runs: Sequence[Variant],
    cfgs: tuple[TrainConfig, TrainConfig | None],
    beta: float,
    steps: int,
    seed: int,
) -> list[dict]:
    """C12 on the phrase task for one seed: each variant trained by ``full_batch.filtered_training``
    for `steps` full-batch steps, under cfgs[0] (ADAM_ARM: the mean over the kept pairs) and, when
    given, cfgs[1] (SGD_ARM: head frozen, each kept pair's loss divided by all pairs); one row per
    arm and variant with the mean change of log π(y+) over every statement's y+ (each statement's
    lead phrase, counted once), at the end and averaged over the steps (the area under its curve)."""
    first = ~table["statement"].duplicated().to_numpy()  # one pair per statement: its y+ counted once
    arms = [(ADAM_ARM, cfgs[0], {})] + ([(SGD_ARM, cfgs[1], {"share": "all", "frozen_head": True})] if cfgs[1] else [])
    rows = []
    for arm, cfg, how in arms:
        rows += [
            {"arm": arm, "seed": seed, **row}
            for row in variant_rows(reference, batch, pair_ches, runs, cfg, beta, steps, first, **how)
        ]
    return rows


def rank_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Spearman(score, −Δ log π(y+)) of each score, per seed: one row per seed, one column per
    score (a constant score ranks nothing: ρ 0)."""
    return rank_correlations(pairs, SCORES)


def within_statement_rho(pairs: pd.DataFrame) -> pd.Series:
    """Per seed, the mean over statements of Spearman(CHES, −Δ log π(y+)) among one statement's pairs:
    a ranking that does not come from telling statements apart (528 pairs come from 48 statements,
    so an overall ρ can rest on a few prompts). A statement whose pairs all tie ranks nothing (ρ 0)."""
    by_statement = pairs.groupby(["seed", "statement"]).apply(
        lambda g: spearman(g["ches"], -g["displacement"]), include_groups=False
    )
    return by_statement.fillna(0.0).groupby(level="seed").mean()


def phrase_claims(pairs: pd.DataFrame, protocol: pd.DataFrame) -> pd.DataFrame:
    """C11 on the phrase task ('C11-phrases'), every quantity per seed (a replicate: its
    reference) and read as an interval over seeds.

    Untestable unless π(y+) falls for ≥ MIN_DISPLACED of the pairs. Reproduced if both hold:
    (rank) the better CHES form of each seed (CHES or its length-normalised form, whichever has
    the higher ρ in that seed) has Spearman ρ with −Δ log π(y+) ≥ RANK_CORRELATION, so does CHES
    within statements (``within_statement_rho``), and the better form's ρ is at least that of each
    alternative score (edit similarity, hidden cosine); (protocol) the
    highest-CHES subset lowers log π(y+) (its change < 0: it displaces) and by more than the
    median and the lowest subsets (each difference > 0). Partly if one of the two holds.

    Reading chosen: the old rule took the CHES form with the highest seed-mean ρ; here the better
    form is taken per seed (a maximum is continuous in the runs, an arg-max of means is not)."""
    decided, optimizer, needed = theory_arm(pairs, MIN_DISPLACED)
    rho = rank_table(decided)
    ches_form = rho[["ches", "ches_normalized"]].max(axis=1)
    within = within_statement_rho(decided)
    rank = [
        Check(f"Spearman(better CHES form, −Δ log π(y+)), {optimizer}", mean_interval(ches_form), RANK_CORRELATION),
        Check("within-statement Spearman(CHES, −Δ log π(y+)), mean over statements", mean_interval(within), RANK_CORRELATION),
        *(Check(f"ρ(better CHES form) − ρ({SCORES[s]})", mean_interval(ches_form - rho[s]), 0.0) for s in ("edit", "cosine")),
    ]
    protocol = protocol[protocol["measure"] == "ches"] if "measure" in protocol else protocol  # the claim is CHES's
    change = protocol.pivot(index="seed", columns="subset", values="chosen_logp_change")
    highest = change["highest"]
    subset_checks = [
        Check("Δ log π(y+) of the highest-CHES subset", mean_interval(highest), -STRICT, above=False),
        *(Check(f"Δ log π(y+): {k} − highest subset", mean_interval(change[k] - highest), STRICT) for k in ("median", "lowest")),
    ]
    shares = displaced_shares(decided)
    enough = Check(f"share of phrase pairs whose π(y+) fell under {optimizer}", mean_interval(shares), needed)
    subsets = ", ".join(f"{k} {change[k].mean():+.3f} ± {change[k].std(ddof=0):.3f}" for k in SUBSETS)
    n_seeds = pairs["seed"].nunique()
    ours = (
        f"{optimizer}: Spearman(score, −Δ log π(y+)) over {len(pairs) // n_seeds} pairs, mean ± sd over {n_seeds} seeds: "
        f"{rank_summary(rho, SCORES)}; π(y+) fell for {shares.mean():.0%} of pairs{other_optimizer(pairs, SCORES)}; DPO "
        f"(the chapter's optimizer) on subsets of {int(protocol['size'].iloc[0])} pairs, Δ log π(y+) of their preferred "
        f"responses: {subsets}"
    )
    decision = decide([*rank, *subset_checks], part=either(rank, subset_checks), precondition=enough)
    precondition = f"π(y+) falls under {optimizer} for ≥ {needed:.0%} of the scored pairs (mean over seeds): {shares.mean():.0%}"
    return claim_table(CLAIMS, "C11-phrases", ours, decision, precondition)


def phrase_mitigation_claims(mitigation: pd.DataFrame, pairs: pd.DataFrame, metric: str = "chosen_logp_area") -> pd.DataFrame:
    """C12 on the phrase task ('C12-phrases'): ``full_batch.matched_claims`` on the change of
    log π(y+) of the statements' preferred phrases, with this task's MIN_DISPLACED. Decided on
    SGD_ARM where `mitigation` has it, its precondition's share of displacing single pairs from
    the pairs table's theory arm (``identify.theory_arm``: plain SGD, head frozen); the other arm
    is reported beside it. Without an arm column: every row, with the table's own displacement."""
    arms = mitigation["arm"] if "arm" in mitigation else pd.Series("", index=mitigation.index)
    deciding = SGD_ARM if (arms == SGD_ARM).any() else arms.iloc[0]
    decided = theory_arm(pairs)[0] if deciding == SGD_ARM else pairs
    kinds = mitigation.groupby("variant")["kind"].first()
    beside = ""
    for arm in dict.fromkeys(arms[arms != deciding]):
        means = per_seed(mitigation[arms == arm], metric).mean()
        best = {k: means[[v for v in means.index if kinds[v] == k]].max() for k in ("all pairs", "CHES filter", "SFT term")}
        beside += (f"; under {arm} (an optimizer arm, not deciding): all pairs {best['all pairs']:+.3f}, "
                   f"best filter {best['CHES filter']:+.3f}, best SFT term {best['SFT term']:+.3f}")  # fmt: skip
    where = f"the statements' preferred phrases, {deciding}" if deciding else "the statements' preferred phrases"
    return matched_claims(mitigation[arms == deciding], displaced_shares(decided), "C12-phrases", CLAIMS, where,
                          MIN_DISPLACED, metric, beside, deciding or "the chapter's optimizer")  # fmt: skip
