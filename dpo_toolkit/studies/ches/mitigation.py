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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import claims_frame, verdict
from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig, check_fits
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE, drifted
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.park import sft_reference, validate_grid
from dpo_toolkit.core.runner import Member, RunKey, run_dpo
from dpo_toolkit.studies.ches.identify import MIN_DISPLACED
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
    of every variant as one ensemble, evaluated on the test pairs (see Evaluator); every
    model on `device`.

    Returns (curves, scores): one row per seed, variant and evaluation, with columns
    seed, variant, kind, drop_fraction, sft_weight, pairs_kept, step, epoch, loss and the
    Evaluator's metrics; and one row per seed and training pair with its CHES. Each seed's
    curves are cached under cache_dir by a hash of every configuration and variant, and an
    interrupted run resumes from its last evaluation.
    """
    check_fits(model_cfg, data_cfg)
    (dpo_cfg,), seeds = validate_grid(dpo_cfg, dpo_cfg.beta, seeds)
    if not runs:
        raise ValueError("run_mitigations needs at least one Variant")
    train, test = make_pairs(data_cfg)
    curves, scores = [], []
    for seed in seeds:
        reference, _ = sft_reference(data_cfg, model_cfg, sft_cfg, eval_cfg, seed, Path(cache_dir), progress, device)
        pair_ches = ches(reference, train).numpy()
        scores.append(pd.DataFrame({"seed": seed, "prompt": train.prompt, "chosen": train.chosen,
                                    "rejected": train.rejected, "ches": pair_ches}))  # fmt: skip
        masks = keep_masks(pair_ches, runs)
        cfg = dataclasses.replace(dpo_cfg, seed=seed)
        members = [Member(cfg, v.sft_weight) for v in runs]
        key = RunKey(
            Path(cache_dir), "mitigation", seed, (data_cfg, model_cfg, dataclasses.replace(sft_cfg, seed=seed), eval_cfg)
        )
        evaluator = Evaluator(test, data_cfg, eval_cfg, reference=reference, betas=cfg.beta)
        df = run_dpo(key, reference, train, members, evaluator, pair_weights=masks, progress=progress)
        curves.append(label_members(df, runs, masks).assign(seed=seed))
    return pd.concat(curves, ignore_index=True), pd.concat(scores, ignore_index=True)


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


def _best(table: pd.DataFrame, kind: str, metric: str, higher: bool) -> pd.Series | None:
    rows = table[table["kind"] == kind]
    if rows.empty:
        return None
    return rows.loc[rows[f"{metric}_mean"].idxmax() if higher else rows[f"{metric}_mean"].idxmin()]


def mitigation_claims(curves: pd.DataFrame, displaced_share: float | None = None) -> pd.DataFrame:
    """The C12 claims row: does removing high-CHES pairs mitigate the damage (held-out
    Δ log π(y+) and OOD rate at the last evaluation) better than an SFT term?

    For each of the two measures: 'mitigates' if the best filter beats all pairs, 'beats
    SFT' if it also beats the best SFT weight (means over seeds). Precondition: all-pairs DPO
    displaces (its held-out Δ log π(y+) is < 0), else there is nothing to mitigate, and, given
    `displaced_share` (the share of single pairs whose π(y+) fell, C11's table), at least
    MIN_DISPLACED of the pairs displace: with fewer, no filter by CHES can be told apart. Reproduced
    when both hold on both measures; partly when the filter mitigates the displacement
    itself (held-out Δ log π(y+)); not reproduced otherwise.
    """
    table = summarize(curves)
    base = table[table["kind"] == "all pairs"].iloc[0]
    checks, parts = [], []
    for metric, higher, label in (("chosen_logp_change", True, "held-out Δ log π(y+)"), ("ood_rate", False, "OOD")):
        filt, sft = _best(table, "CHES filter", metric, higher), _best(table, "SFT term", metric, higher)
        if filt is None or sft is None:
            raise ValueError("mitigation_claims needs at least one CHES-filter and one SFT-term variant")

        def better(a: float, b: float, higher: bool = higher) -> bool:
            return a > b if higher else a < b

        mitigates = better(filt[f"{metric}_mean"], base[f"{metric}_mean"])
        beats = mitigates and better(filt[f"{metric}_mean"], sft[f"{metric}_mean"])
        checks.append((mitigates, beats))
        parts.append(
            f"{label}: all pairs {base[f'{metric}_mean']:+.3f}, "
            f"best filter ({filt['variant']}) {filt[f'{metric}_mean']:+.3f} ± {filt[f'{metric}_std']:.3f}, "
            f"best SFT ({sft['variant']}) {sft[f'{metric}_mean']:+.3f} ± {sft[f'{metric}_std']:.3f}"
        )
    displacement = float(base["chosen_logp_change_mean"])
    enough = displaced_share is None or displaced_share >= MIN_DISPLACED
    c12 = verdict(all(m and b for m, b in checks), checks[0][0], testable=displacement < 0 and enough)
    share = (
        ""
        if displaced_share is None
        else (f"; π(y+) falls for ≥ {MIN_DISPLACED:.0%} of single pairs (C11's table): {displaced_share:.0%}")
    )
    n_seeds = curves["seed"].nunique()
    return claims_frame(
        [
            {
                "claim_id": "C12",
                "statement": "Removing the training pairs with the highest CHES mitigates likelihood displacement, "
                "and does so better than adding an SFT term to the loss.",
                "paper_value": "filtering mitigates; the SFT term helps less (talk, 'Data filtering via CHES')",
                "our_value": f"last evaluation, mean ± sd over {n_seeds} seeds; " + "; ".join(parts),
                "verdict": c12,
                "precondition": f"all-pairs DPO lowers held-out log π(y+) (displacement to mitigate): {displacement:+.3f}"
                + share,
            }
        ]
    )


def ood_drift(curves: pd.DataFrame) -> pd.Series:
    """OOD rate at the last evaluation minus at step 0 (the reference), mean over seeds, per variant."""
    first = curves[curves["step"] == 0].set_index(["seed", "variant"])["ood_rate"]
    final = final_rows(curves).set_index(["seed", "variant"])["ood_rate"]
    return (final - first).groupby("variant").mean()


DRIFT_REDUCTION = 0.5  # C21: the filter must remove at least this share of the OOD drift


def drift_claims(curves: pd.DataFrame, setup: str = "the grokking setup") -> pd.DataFrame:
    """The cross-study row C21 (no source): does CHES filtering reduce the OOD drift of
    `setup` (named in the statement)? Drift = OOD at the last evaluation minus OOD of the reference (step 0),
    mean over seeds. Untestable here unless all-pairs DPO drifts by ``core.drift``'s rule (its
    seed-mean final OOD ≥ 50 % and ≥ 10 points above the reference's: drift to reduce); else
    reproduced if the best filter removes ≥ DRIFT_REDUCTION of the all-pairs drift, partly if
    it removes some, not reproduced otherwise."""
    drift = ood_drift(curves)
    final = final_rows(curves).set_index(["seed", "variant"])
    kinds = final.groupby("variant")["kind"].first()
    base = float(drift[kinds == "all pairs"].iloc[0])
    all_pairs = curves[curves["kind"] == "all pairs"]
    reference_ood = float(all_pairs.loc[all_pairs["step"] == 0, "ood_rate"].mean())
    final_ood = float(final_rows(all_pairs)["ood_rate"].mean())
    drifts = bool(drifted(final_ood, reference_ood))
    filtered = drift[kinds == "CHES filter"]
    if filtered.empty:
        raise ValueError("drift_claims needs at least one CHES-filter variant")
    best_name, best = filtered.idxmin(), float(filtered.min())
    removed = (base - best) / base if base > 0 else float("nan")
    c21 = verdict(removed >= DRIFT_REDUCTION, removed > 0, testable=drifts)
    per_variant = "; ".join(f"{name} {drift[name]:+.3f}" for name in dict.fromkeys(final_rows(curves)["variant"]))
    return claims_frame(
        [
            {
                "claim_id": "C21",
                "statement": f"Cross-study question: removing high-CHES pairs reduces the OOD drift of {setup}.",
                "paper_value": "no source answers it (the project's question)",
                "our_value": f"OOD at the last evaluation minus the reference's, mean over {curves['seed'].nunique()} seeds: "
                f"{per_variant}; best filter {best_name}",
                "verdict": c21,
                "precondition": f"all-pairs DPO drifts out of distribution (seed-mean OOD ≥ {DRIFT_OOD:.0%} and ≥ "
                f"{DRIFT_RISE * 100:.0f} points above the reference's): {reference_ood:.0%} → {final_ood:.0%}",
            }
        ]
    )


def drift_answer(curves: pd.DataFrame, setup: str = "the grokking setup") -> str:
    """One Markdown sentence answering C21's question from ``ood_drift`` of the runs of `setup`."""
    drift = ood_drift(curves)
    kinds = curves.groupby("variant")["kind"].first()
    base, filtered = drift["all pairs"], drift[kinds.reindex(drift.index) == "CHES filter"]
    answer = (
        f"CHES filtering {'reduces' if filtered.min() < base else 'does not reduce'} the OOD drift of {setup} here."
        if base > 0
        else "On all pairs the OOD rate does not rise here, so there is no drift for filtering to reduce (C21 is untestable)."
    )
    return (
        f"**Answer, from this run:** OOD drift on all pairs {base:+.3f}; with the best CHES filter "
        f"({filtered.idxmin()}) {filtered.min():+.3f}. {answer}"
    )
