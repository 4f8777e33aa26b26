"""Mitigating likelihood displacement on the number-line task (Razin et al., arXiv
2410.08847, §6; Razin's talk, 'Data filtering via CHES'): DPO on all pairs, with the
top-k share of training pairs by CHES removed, and with an SFT term added to the loss.

Every variant of one seed starts from the same SFT reference and trains as one member
of one batched ensemble, on the same minibatches and for the same number of steps. A
filtered variant gives its removed pairs weight 0 (its loss on a minibatch is the mean
over the pairs it keeps); an SFT variant minimises L_DPO + λ · (−log π(y+)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, decide
from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig, check_fits
from dpo_toolkit.core.data import Batch, PairSet, make_pairs
from dpo_toolkit.core.ensemble import References
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.evidence import Check, conjunction, mean_interval
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.runner import Member, RunKey, run_dpo
from dpo_toolkit.recipes.sft_then_dpo import replicate_members, sft_references, validate_grid
from dpo_toolkit.studies.ches.identify import MIN_DISPLACED, claim_table
from dpo_toolkit.studies.ches.measures import ches, ches_filter


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of training: drop the top `drop_fraction` of pairs by CHES, add `sft_weight` × the SFT loss."""

    drop_fraction: float = 0.0
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.drop_fraction, int | float) and 0 <= self.drop_fraction < 1):
            raise ValueError(f"drop_fraction must be in [0, 1), got {self.drop_fraction!r}")
        if not (isinstance(self.sft_weight, int | float) and math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"sft_weight must be a finite number ≥ 0, got {self.sft_weight!r}")

    @property
    def kind(self) -> str:
        """'all pairs', 'CHES filter' or 'SFT term' (one of the two at a time)."""
        if self.drop_fraction and self.sft_weight:
            return "filter + SFT"
        return "CHES filter" if self.drop_fraction else "SFT term" if self.sft_weight else "all pairs"

    @property
    def name(self) -> str:
        if self.kind == "CHES filter":
            return f"CHES top {self.drop_fraction:.0%} removed"
        if self.kind == "SFT term":
            return f"SFT term λ={self.sft_weight:g}"
        return self.kind if self.kind == "all pairs" else f"top {self.drop_fraction:.0%} removed + λ={self.sft_weight:g}"


def variants(drop_fractions: Sequence[float], sft_weights: Sequence[float]) -> list[Variant]:
    """All pairs, then one CHES-filter variant per drop fraction, then one SFT-term variant per weight."""
    for name, values in (("drop_fractions", drop_fractions), ("sft_weights", sft_weights)):
        if any(v == 0 for v in values):
            raise ValueError(f"{name} must not contain 0 (the all-pairs variant is always trained), got {list(values)}")
    return [Variant(), *(Variant(drop_fraction=k) for k in drop_fractions), *(Variant(sft_weight=w) for w in sft_weights)]


def keep_masks(scores: np.ndarray, runs: Sequence[Variant]) -> torch.Tensor:
    """(variants, pairs) 0/1 weights: each variant keeps the pairs ches_filter keeps at its drop fraction."""
    return torch.tensor(np.stack([ches_filter(scores, v.drop_fraction) for v in runs]), dtype=torch.float32)


def label_members(df: pd.DataFrame, runs: Sequence[Variant], masks: torch.Tensor) -> pd.DataFrame:
    """Replace the ensemble's `member` column of df by each member's variant: its name, kind,
    drop fraction, SFT weight and the number of pairs its mask keeps."""
    described = pd.DataFrame({"member": range(len(runs)), "variant": [v.name for v in runs], "kind": [v.kind for v in runs],
                              "drop_fraction": [v.drop_fraction for v in runs], "sft_weight": [v.sft_weight for v in runs],
                              "pairs_kept": masks.sum(1).int().numpy()})  # fmt: skip
    return df.merge(described, on="member").drop(columns="member")


def run_mitigations(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: DPOConfig,
    eval_cfg: EvalConfig,
    runs: Sequence[Variant],
    seeds: Sequence[int],
    cache_dir: str | Path,
    progress: bool | None = None,
    device: str = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each seed: the SFT reference, the CHES of every training pair under it, then DPO
    of every variant, evaluated on the test pairs (see Evaluator); every model on `device`.
    Replicates are members: every (seed, variant) trains in one ensemble, against its seed's
    reference and with its seed's batch order.

    Returns (curves, scores): one row per seed, variant and evaluation, with columns
    seed, variant, kind, drop_fraction, sft_weight, pairs_kept, step, epoch, loss and the
    Evaluator's metrics; and one row per seed and training pair with its CHES. The
    curves are cached under cache_dir by a hash of every configuration, seed and variant, and an
    interrupted run resumes from its last evaluation.
    """
    check_fits(model_cfg, data_cfg)
    (dpo_cfg,), seeds = validate_grid(dpo_cfg, dpo_cfg.beta, seeds)
    if not runs:
        raise ValueError("run_mitigations needs at least one Variant")
    train, test = make_pairs(data_cfg)
    models = [
        model for model, _ in sft_references(data_cfg, model_cfg, sft_cfg, eval_cfg, seeds, Path(cache_dir), progress, device)
    ]
    key = RunKey(Path(cache_dir), "mitigation", seeds[0],
                 (data_cfg, model_cfg, *(dataclasses.replace(sft_cfg, seed=s) for s in seeds), eval_cfg))  # fmt: skip
    evaluator = partial(Evaluator, test, data_cfg, eval_cfg)  # evaluator(reference=…) once the members' reference is built
    curves, pair_ches = train_variants(key, models, seeds, train, dpo_cfg, runs, lambda ref: evaluator(reference=ref), progress)
    scores = [pd.DataFrame({"seed": seed, "prompt": train.prompt, "chosen": train.chosen, "rejected": train.rejected,
                            "ches": pair_ches[j]}) for j, seed in enumerate(seeds)]  # fmt: skip
    return curves, pd.concat(scores, ignore_index=True)


def train_variants(
    key: RunKey,
    references: Sequence[Transformer],
    seeds: Sequence[int],
    pairs: PairSet | Batch,
    dpo_cfg: DPOConfig,
    runs: Sequence[Variant],
    evaluator: Callable[[Transformer | References], Callable[..., list[dict]]],
    progress: bool | None = None,
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """DPO of every variant from each seed's reference (references[j] is seeds[j]'s) on `pairs`.
    Replicates are members: every (seed, variant) is one member of one ensemble (see ``run_dpo``),
    against its seed's reference and with its seed's batch order; each variant keeps the pairs its
    CHES filter keeps (CHES under its seed's reference) and adds its SFT term. ``evaluator(reference)``
    gives the run's evaluate from the members' reference (the one model, or ``References``).
    Returns (curves, CHES): the evaluations labelled by ``label_members``, with their seed; and
    every pair's CHES per seed, (pairs,) each."""
    pair_ches = [ches(reference, pairs).numpy() for reference in references]  # per seed, (pairs,)
    masks = [keep_masks(scores, runs) for scores in pair_ches]  # per seed, (variants, pairs)
    grid, _, reference = replicate_members(list(seeds), [dpo_cfg] * len(runs), list(references))
    members = [Member(dataclasses.replace(dpo_cfg, seed=seed), runs[k].sft_weight) for seed, k in grid]
    df = run_dpo(key, reference, pairs, members, evaluator(reference), pair_weights=torch.cat(masks), progress=progress)
    curves = []
    for j, seed in enumerate(seeds):  # each seed's members, numbered 0 … variants − 1 as label_members reads them
        mine = df[df["member"] // len(runs) == j].assign(member=lambda d: d["member"] % len(runs))
        curves.append(label_members(mine, runs, masks[j]).assign(seed=seed))
    return pd.concat(curves, ignore_index=True), pair_ches


def final_rows(curves: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every (seed, variant)."""
    return curves[curves["step"] == curves.groupby("seed")["step"].transform("max")]


METRICS = ("chosen_logp_change", "ood_rate", "kl", "accuracy")


def summarize(curves: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean and sd (ddof 0) over seeds of each metric at the last evaluation, one row per variant (in training order)."""
    final = final_rows(curves)
    order = list(dict.fromkeys(final["variant"]))
    table = final.groupby("variant")[list(metrics)].agg(["mean", lambda x: x.std(ddof=0)]).reindex(order)
    table.columns = [f"{m}_{'mean' if s == 'mean' else 'std'}" for m, s in table.columns]
    first = final.groupby("variant")[["kind", "drop_fraction", "sft_weight", "pairs_kept"]].first().reindex(order)
    return first.join(table).reset_index()


STRICT = 1e-9
"""A check reads 'at least' (its interval on or beyond the threshold); a claim that needs
'strictly better' (or 'strictly below 0') is read against this margin instead of 0, so that a tie
in every seed (no OOD answer in any variant, say) is not counted as better."""


def per_seed(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` of `rows` (one row per seed and variant) as a table: one row per seed (a
    replicate), one column per variant, in training order."""
    table = rows.pivot(index="seed", columns="variant", values=metric)
    return table[list(dict.fromkeys(rows["variant"]))]


def _mean_sd(values: pd.Series) -> str:
    """'+0.123 ± 0.045': mean ± sd (ddof 0) over seeds."""
    return f"{values.mean():+.3f} ± {values.std(ddof=0):.3f}"


def variant_columns(rows: pd.DataFrame, kind: str) -> list[str]:
    """The variants of `kind` (filter, sft, …) in `rows`, in training order."""
    return list(dict.fromkeys(rows.loc[rows["kind"] == kind, "variant"]))


def preconditions(checks: list[Check]) -> Check:
    """Several preconditions as the one Check ``decide`` reads: the first that fails, else the
    first whose interval straddles, else the first (all hold); see ``core.evidence.conjunction``."""
    return conjunction(checks)[1]


def displaced_check(displaced_share, minimum: float = MIN_DISPLACED) -> Check:
    """The precondition that enough single pairs displace: the share of single pairs whose π(y+)
    fell, one value per seed (``identify.displaced_shares``), against `minimum` (C11's
    MIN_DISPLACED unless given). A single number counts as one replicate (it decides nothing)."""
    shares = np.atleast_1d(np.asarray(displaced_share, dtype=float))
    return Check("share of single pairs whose π(y+) fell", mean_interval(shares), minimum)


CLAIMS = {
    "C12": ClaimText(
        "Removing the training pairs with the highest CHES mitigates likelihood displacement, "
        "and does so better than adding an SFT term to the loss.",
        "filtering mitigates; the SFT term helps less",
        "talk, 'Data filtering via CHES'",
    ),
}
"""What C12 says and what the paper reports; ``mitigation_claims`` adds what the runs show."""


def mitigation_claims(curves: pd.DataFrame, displaced_share=None) -> pd.DataFrame:
    """The C12 claims row: does removing high-CHES pairs mitigate the damage (held-out
    Δ log π(y+) and OOD rate at the last evaluation) better than an SFT term?

    Per seed (a replicate: its reference, initialisation and data order; the variants of one
    seed are not independent of each other) and for each of the two measures: the best CHES
    filter of that seed (highest Δ log π(y+), lowest OOD) against all pairs ('mitigates') and
    against the best SFT weight of that seed ('beats SFT'); each difference must be > 0
    (≥ STRICT), read as an interval over seeds. Reproduced when all four hold; partly when the
    filter mitigates the displacement itself (held-out Δ log π(y+)); not reproduced otherwise.

    Preconditions: all-pairs DPO displaces (its held-out Δ log π(y+) is < 0), else there is
    nothing to mitigate, and, given `displaced_share` (per seed, the share of single pairs whose
    π(y+) fell: ``identify.displaced_shares`` of C11's table), at least MIN_DISPLACED of the pairs
    displace: with fewer, no filter by CHES can be told apart.
    """
    final = final_rows(curves)
    if not variant_columns(final, "CHES filter") or not variant_columns(final, "SFT term"):
        raise ValueError("mitigation_claims needs at least one CHES-filter and one SFT-term variant")
    (all_pairs,) = variant_columns(final, "all pairs")
    measures = [_c12_measure(final, all_pairs, *measure) for measure in C12_MEASURES]
    checks, parts = [m[0] for m in measures], [m[1] for m in measures]
    precondition, sentence = _c12_precondition(per_seed(final, "chosen_logp_change")[all_pairs], displaced_share)
    n_seeds = curves["seed"].nunique()
    ours = f"last evaluation, mean ± sd over {n_seeds} seeds; " + "; ".join(parts)
    decision = decide([c for pair in checks for c in pair], part=[checks[0][0]], precondition=precondition)
    return claim_table(CLAIMS, "C12", ours, decision, sentence)


C12_MEASURES = (("chosen_logp_change", True, "held-out Δ log π(y+)"), ("ood_rate", False, "OOD"))
"""C12's two measures: (metric, whether higher is better, its label)."""


def _c12_measure(final: pd.DataFrame, all_pairs: str, metric: str, higher: bool, label: str) -> tuple[tuple[Check, Check], str]:
    """C12 on one measure: ('mitigates', 'beats SFT'), each seed's best filter against all pairs
    and against its best SFT weight (each difference > 0, 'better' being higher Δ log π(y+) and
    lower OOD); and the part of the row's value that reports the measure."""
    table = per_seed(final, metric)
    base = table[all_pairs]
    filt, sft = (table[variant_columns(final, kind)] for kind in ("CHES filter", "SFT term"))
    best_filter, best_sft = (filt.max(axis=1), sft.max(axis=1)) if higher else (filt.min(axis=1), sft.min(axis=1))
    sign = 1 if higher else -1  # 'better' is higher Δ log π(y+), lower OOD
    checks = (
        Check(f"{label}: best filter − all pairs" if higher else f"{label}: all pairs − best filter",
              mean_interval(sign * (best_filter - base)), STRICT),
        Check(f"{label}: best filter − best SFT" if higher else f"{label}: best SFT − best filter",
              mean_interval(sign * (best_filter - best_sft)), STRICT),
    )  # fmt: skip
    part = (
        f"{label}: all pairs {_mean_sd(base)}, each seed's best filter {_mean_sd(best_filter)}, "
        f"each seed's best SFT {_mean_sd(best_sft)}"
    )
    return checks, part


def _c12_precondition(base_change: pd.Series, displaced_share) -> tuple[Check, str]:
    """C12's precondition, as the Check ``decide`` reads and as the row's sentence: all-pairs DPO
    lowers held-out log π(y+) (`base_change`, per seed) and, given `displaced_share`, enough
    single pairs displace."""
    displaces = Check("all-pairs held-out Δ log π(y+)", mean_interval(base_change), -STRICT, above=False)
    pre = [displaces] if displaced_share is None else [displaces, displaced_check(displaced_share)]
    share = (
        ""
        if displaced_share is None
        else f"; π(y+) falls for ≥ {MIN_DISPLACED:.0%} of single pairs under the chapter's optimizer (C11's table, "
        f"mean over seeds): {np.mean(displaced_share):.0%}"
    )
    sentence = (
        f"all-pairs DPO lowers held-out log π(y+) (displacement to mitigate; mean over seeds): {base_change.mean():+.3f}" + share
    )
    return preconditions(pre), sentence
