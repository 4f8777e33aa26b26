"""C12 at a matched update budget: every variant (all pairs, a CHES filter, an SFT term) trains
full-batch from the reference, so every kept pair is in every step of every variant.

What a filter changes besides which pairs push is how hard each kept pair pushes. With the loss
a mean over the kept pairs (`share` "kept"), a kept pair weighs 1/kept instead of 1/all; with
the kept pairs' losses summed and divided by all pairs ("all"), each kept pair's gradient is
exactly its gradient in the all-pairs member at the same weights. Under plain SGD "all" is the
clean counterfactual: the filter only removes pairs. Under Adam or RMSprop the two coincide (the
step is normalised whatever the loss's scale), so no weighting removes the larger share a kept
pair takes of each normalised step: an adaptive optimizer's filter is always mixed with a larger
step per kept pair. The number line's C12-sgd is therefore decided under SGD with "all".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, decide
from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import Batch, PairSet, collate_pairs
from dpo_toolkit.core.ensemble import Ensemble, model_device
from dpo_toolkit.core.evidence import Check, mean_interval
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.recipes.sft_then_dpo import sft_references
from dpo_toolkit.studies.ches.identify import MIN_DISPLACED, claim_table
from dpo_toolkit.studies.ches.measures import HEAD, ches
from dpo_toolkit.studies.ches.mitigation import (
    STRICT,
    Variant,
    displaced_check,
    keep_masks,
    label_members,
    per_seed,
    preconditions,
)

SHARES = ("kept", "all")
TIE = 0.01  # nats by which the best filter must beat all pairs and the best SFT term (both can sit at a ceiling)


def filtered_training(
    reference: Transformer,
    batch: Batch,
    weights: torch.Tensor,
    sft_weights: Sequence[float],
    cfg: TrainConfig,
    beta: float,
    steps: int,
    share: str = "kept",
    frozen_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-batch DPO of one member per row of `weights` (members, pairs; 1 keeps a pair, 0 removes
    it): member m minimises its kept pairs' DPO loss plus sft_weights[m] × their −log π(y+), for
    `steps` steps of cfg's optimizer from the reference, the members as one Ensemble. With `share`
    "kept" the loss is the mean over the kept pairs; with "all" their sum divided by all pairs
    (each kept pair's gradient as in the all-pairs member). With `frozen_head`, HEAD keeps its
    weights. Every kept pair is in every step. Returns (the change of log π(y+) of every pair at
    the end, (members, pairs); the reference's log π(y+), (pairs,); the mean of that change after
    each of the `steps` steps, (members, pairs): the area under its curve per step)."""
    if share not in SHARES:
        raise ValueError(f"share must be one of {SHARES}, got {share!r}")
    n_pairs = len(batch.tokens) // 2
    device = model_device(reference)
    n_members = len(weights)
    tokens, mask = batch.tokens.to(device), batch.response_mask.to(device)
    with torch.no_grad():
        reference_logps = sequence_logps(reference(tokens), tokens, mask)  # (2n,)
    ref_chosen, ref_rejected = reference_logps[:n_pairs], reference_logps[n_pairs:]
    weights = weights.to(device)
    shares = weights / (weights.sum(1, keepdim=True) if share == "kept" else n_pairs)  # (M, n)
    lambdas = torch.tensor(list(sft_weights), dtype=shares.dtype, device=device)[:, None]  # (M, 1)
    policies = Ensemble([reference] * n_members)
    trained = [p for name, p in policies.params.items() if not (frozen_head and name.startswith(HEAD))]
    optimizer = make_optimizer(trained, cfg)
    stacked, stacked_mask = tokens.expand(n_members, -1, -1), mask.expand(n_members, -1, -1)  # (M, 2n, T)
    area = torch.zeros(n_members, n_pairs, dtype=torch.float64, device=device)  # Σ over steps of the change after each
    for step in range(steps):
        logps = sequence_logps(policies(stacked), stacked, stacked_mask)  # (M, 2n)
        if step:  # the change after the previous step
            area += (logps[:, :n_pairs] - ref_chosen).detach().double()
        losses, _, _ = dpo_loss(logps[:, :n_pairs], logps[:, n_pairs:], ref_chosen, ref_rejected, beta)  # (M, n)
        loss = (shares * (losses - lambdas * logps[:, :n_pairs])).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        change = (sequence_logps(policies(stacked), stacked, stacked_mask)[:, :n_pairs] - ref_chosen).double()
    return change.cpu(), ref_chosen.double().cpu(), ((area + change) / steps).cpu()


def variant_rows(
    reference: Transformer,
    batch: Batch,
    pair_ches: np.ndarray,
    runs: Sequence[Variant],
    cfg: TrainConfig,
    beta: float,
    steps: int,
    measured: np.ndarray | None = None,
    **how,
) -> list[dict]:
    """Each variant of `runs` trained by ``filtered_training`` (keyword arguments `how`: share,
    frozen_head) on `batch`, its filters by `pair_ches`; one row per variant with its kind, drop
    fraction, SFT weight, pairs kept and the mean change of log π(y+) over the `measured` pairs
    (a boolean mask; all pairs by default), at the end and averaged over the steps."""
    masks = keep_masks(pair_ches, runs)  # (variants, pairs)
    changes, _, areas = filtered_training(reference, batch, masks, [v.sft_weight for v in runs], cfg, beta, steps, **how)
    measured = np.ones(changes.shape[1], dtype=bool) if measured is None else measured
    means = pd.DataFrame({"member": range(len(runs)), "chosen_logp_change": changes[:, measured].mean(1).numpy(),
                          "chosen_logp_area": areas[:, measured].mean(1).numpy()})  # fmt: skip
    return label_members(means, runs, masks).to_dict("records")


def run_number_line_sgd(
    data_cfg: DataConfig,
    sft_cfg: TrainConfig,
    sgd_cfg: TrainConfig,
    beta: float,
    steps: int,
    pairs: PairSet,
    runs: Sequence[Variant],
    seeds: Sequence[int],
    cache_dir: str | Path,
    device: str = "cpu",
) -> pd.DataFrame:
    """C12-sgd: for each seed's SFT reference (``sft_references``, cached, C11's), every variant of
    `runs` trained on C11's scored `pairs` full-batch by plain SGD (sgd_cfg, β `beta`, `steps`
    steps) with share "all", the head trained as in C11's SGD arm; filters by CHES under the
    reference. One row per (seed, variant), the change of log π(y+) averaged over the pairs."""
    if sgd_cfg.optimizer != "sgd":
        raise ValueError(f"C12-sgd is decided under plain SGD; sgd_cfg.optimizer is {sgd_cfg.optimizer!r}")
    batch = collate_pairs(pairs)
    rows = []
    references = sft_references(data_cfg, ModelConfig(), sft_cfg, EvalConfig(), seeds, Path(cache_dir), device=device)
    for seed, (reference, _) in zip(seeds, references, strict=True):
        pair_ches = ches(reference, batch).numpy()
        variant = variant_rows(reference, batch, pair_ches, runs, sgd_cfg, beta, steps, share="all")
        rows += [{"seed": seed, **row} for row in variant]
    return pd.DataFrame(rows)


CLAIMS = {
    "C12-sgd": ClaimText(
        "[number line, plain SGD, each kept pair's gradient as in all pairs] Removing the training pairs with the "
        "highest CHES mitigates likelihood displacement, and does so better than adding an SFT term to the loss.",
        "filtering mitigates; the SFT term helps less",
        "talk, 'Data filtering via CHES'",
    ),
}
"""C12 on the number line without the filter's larger step per kept pair; ``matched_claims`` adds the runs."""


def matched_claims(
    mitigation: pd.DataFrame,
    displaced_share,
    claim_id: str = "C12-sgd",
    texts=CLAIMS,
    measured: str = "C11's scored pairs",
    minimum: float = MIN_DISPLACED,
    metric: str = "chosen_logp_area",
    beside: str = "",
    optimizer: str = "plain SGD",
) -> pd.DataFrame:
    """C12 at a matched update budget (one row per seed and variant in `mitigation`), read on
    `metric`: by default the area under the Δ log π(y+) curve per step (at the end a filter and an
    SFT term can both sit at the ceiling log(1/π_ref(y+)) and tie); 'chosen_logp_change' reads the end.

    Per seed (a replicate): the best CHES filter of that seed (highest `metric`) against all pairs
    and against the best SFT term of that seed, each difference read as an interval over seeds.
    Untestable unless all-pairs DPO lowers the mean log π(y+) at the end (< 0: displacement to
    mitigate) and π(y+) falls for ≥ `minimum` of single pairs under `optimizer` (`displaced_share`,
    one value per seed). Reproduced if the best filter beats all pairs and the best SFT term by ≥ TIE; partly if
    it beats all pairs by ≥ TIE. The best filter and SFT term are chosen per seed. `beside` (other
    arms' figures) is appended to the row's value."""
    table, end = per_seed(mitigation, metric), per_seed(mitigation, "chosen_logp_change")
    kinds = mitigation.groupby("variant")["kind"].first()
    filters = [v for v in table.columns if kinds[v] == "CHES filter"]
    if not filters:
        raise ValueError(f"{claim_id} needs at least one CHES-filter variant")
    sfts = [v for v in table.columns if kinds[v] == "SFT term"]
    (all_pairs,) = [v for v in table.columns if kinds[v] == "all pairs"]
    base, best = table[all_pairs], table[filters].max(axis=1)
    what = {"chosen_logp_area": "Δ log π(y+) per step, area", "chosen_logp_change": "Δ log π(y+) at the end"}[metric]
    gain = Check(f"best filter − all pairs ({what})", mean_interval(best - base), TIE)
    full = [gain]
    parts = [f"all pairs {base.mean():+.3f} ± {base.std(ddof=0):.3f}",
             f"each seed's best filter {best.mean():+.3f} ± {best.std(ddof=0):.3f}"]  # fmt: skip
    if sfts:
        best_sft = table[sfts].max(axis=1)
        full.append(Check(f"best filter − best SFT term ({what})", mean_interval(best - best_sft), TIE))
        parts.append(f"each seed's best SFT term {best_sft.mean():+.3f} ± {best_sft.std(ddof=0):.3f}")
    displaces = Check("all-pairs Δ log π(y+) at the end", mean_interval(end[all_pairs]), -STRICT, above=False)
    pre = preconditions([displaces, displaced_check(displaced_share, minimum)])
    at_end = f"; at the end: all pairs {end[all_pairs].mean():+.3f}, best filter {end[filters].max(axis=1).mean():+.3f}"
    ours = f"{what}, mean over {measured}, mean ± sd over {len(table)} seeds: " + "; ".join(parts) + at_end + beside
    precondition = (
        f"all-pairs DPO lowers the mean log π(y+) (displacement to mitigate; mean over seeds): {end[all_pairs].mean():+.3f}; "
        f"π(y+) falls under {optimizer} for ≥ {minimum:.0%} of single pairs: {np.mean(displaced_share):.0%}"
    )
    return claim_table(texts, claim_id, ours, decide(full, part=[gain], precondition=pre), precondition)
