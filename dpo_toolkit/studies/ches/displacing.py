"""C11 on a task where pairs displace (``phrases``): which score ranks the displacing pairs,
and the paper's protocol, DPO on the lowest-, median- and highest-CHES subsets of equal
size (Razin et al., arXiv 2410.08847, §4; the talk's 'Identifying sources')."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import claims_frame, verdict
from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.stats import spearman
from dpo_toolkit.studies.ches.measures import ches, edit_similarity, hidden_cosine, normalized_ches, single_pair_displacement
from dpo_toolkit.studies.ches.phrases import SUBSETS, PhraseConfig, phrase_pairs, subset_displacement, subset_indices
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


def run_phrase_study(
    cfg: PhraseConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: TrainConfig,
    beta: float,
    steps: int,
    subset_fraction: float,
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each seed: the reference (``train_phrase_reference``), every pair's displacement when
    DPO (dpo_cfg's optimizer, β, `steps` steps) trains on it alone and its four SCORES; then
    the protocol: DPO for `steps` full-batch steps on each of the lowest-, median- and
    highest-CHES subsets of round(subset_fraction · pairs) pairs.

    Returns (pairs, protocol): one row per (seed, pair) with statement, chosen, rejected,
    same_meaning, displacement and the scores; one row per (seed, subset) with its size, mean
    CHES and the mean change of log π(y+) over its preferred responses."""
    device = resolve_device(device)
    batch, table = phrase_pairs(cfg)
    size = round(subset_fraction * len(table))
    pairs, protocol = [], []
    for seed in seeds:
        reference = build_model(cfg.model_config(), seed, device)
        fit_reference(cfg, reference, sft_cfg)
        reference.eval().requires_grad_(False)
        scores = {
            "ches": ches(reference, batch).numpy(),
            "ches_normalized": normalized_ches(reference, batch).numpy(),
            "edit": np.array([edit_similarity(a, b) for a, b in zip(table["chosen"], table["rejected"], strict=True)]),
            "cosine": hidden_cosine(reference, batch).numpy(),
        }
        displacement = single_pair_displacement(reference, batch, dpo_cfg, beta, steps)
        pairs.append(table.assign(seed=seed, displacement=displacement, **scores))
        subsets = subset_indices(scores["ches"], size)
        change = subset_displacement(reference, batch, subsets, dpo_cfg, beta, steps)
        protocol += [{"seed": seed, "subset": name, "size": size, "mean_ches": float(scores["ches"][subsets[name]].mean()),
                      "chosen_logp_change": change[name]} for name in SUBSETS]  # fmt: skip
    return pd.concat(pairs, ignore_index=True), pd.DataFrame(protocol)


def rank_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Spearman(score, −Δ log π(y+)) of each score, per seed: one row per seed, one column per score."""
    return pd.DataFrame(
        {s: pairs.groupby("seed").apply(lambda g, s=s: spearman(g[s], -g["displacement"]), include_groups=False) for s in SCORES}
    )


def phrase_claims(pairs: pd.DataFrame, protocol: pd.DataFrame) -> pd.DataFrame:
    """C11 on the phrase task ('C11-phrases'). Untestable unless π(y+) falls for ≥ MIN_DISPLACED
    of the pairs. Reproduced if both hold: (rank) a CHES form has the highest mean Spearman with
    −Δ log π(y+), at ≥ RANK_CORRELATION; (protocol) the highest-CHES subset lowers log π(y+)
    more than the median and the lowest subsets (means over seeds). Partly if one of them holds."""
    rho = rank_table(pairs)
    mean, spread = rho.mean(), rho.std(ddof=0)
    best = mean.idxmax()
    rank_ok = best in ("ches", "ches_normalized") and mean[best] >= RANK_CORRELATION
    change = protocol.groupby("subset")["chosen_logp_change"].agg(mean="mean", std=lambda x: x.std(ddof=0))
    protocol_ok = change.loc["highest", "mean"] < min(change.loc["median", "mean"], change.loc["lowest", "mean"])
    displaced = float((pairs["displacement"] < 0).mean())
    ranks = "; ".join(f"{SCORES[s]} {mean[s]:+.2f} ± {spread[s]:.2f}" for s in SCORES)
    subsets = ", ".join(f"{k} {change.loc[k, 'mean']:+.3f} ± {change.loc[k, 'std']:.3f}" for k in SUBSETS)
    n_seeds = pairs["seed"].nunique()
    return claims_frame(
        [
            {
                "claim_id": "C11-phrases",
                "statement": "[phrase task, pairs that displace] The CHES score identifies the training pairs that cause "
                "likelihood displacement; training on the highest-CHES pairs displaces most.",
                "paper_value": "CHES ranks displacing pairs first; the highest-CHES subset lowers log π(y+) most "
                "(talk, 'Identifying sources')",
                "our_value": f"Spearman(score, −Δ log π(y+)) over {len(pairs) // n_seeds} pairs, mean ± sd over {n_seeds} seeds: "
                f"{ranks}; DPO on subsets of {int(protocol['size'].iloc[0])} pairs, Δ log π(y+) of their preferred responses: "
                f"{subsets}",
                "verdict": verdict(rank_ok and protocol_ok, rank_ok or protocol_ok, testable=displaced >= MIN_DISPLACED),
                "precondition": f"π(y+) falls for ≥ {MIN_DISPLACED:.0%} of the scored pairs: {displaced:.0%}",
            }
        ]
    )
