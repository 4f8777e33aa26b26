"""The displacement map: in which regime does single-prompt DPO in the tiny persona LM lower
π(y+)? Over the quantities the theory names (Razin et al., arXiv 2410.08847; Razin's talk,
part 2): π_ref(y+), the size of h relative to W, the similarity of y+ and y−, and the
optimizer's regime.

- **π_ref(y+)** is set by how the corpus is built: the lead token of each synonym group has
  probability `lead_weight`, and the LM is fitted to it. Every pair's y+ is a lead token.
- **‖h‖ relative to ‖W‖** is changed without changing the reference's function: the final
  LayerNorm's gain and bias are divided by `scale` and the unembedding multiplied by it
  (``rebalance``), so π_ref is the same while ‖W_z‖² / ‖h‖² grows by scale⁴. (The final
  LayerNorm makes ‖h‖² about d_model against unembedding rows of norm about 1: the first
  term of the one-step change of log π(y+), ∝ ‖h‖², dominates at scale 1.)
- **Similarity**: y− a synonym of y+ or a token of the other meaning.
- **Optimizer**: plain SGD (the theory's first-order regime), RMSprop at a small learning
  rate (the paper's optimizer), Adam.

A run *displaces* when π(y+) after DPO is below π_ref(y+), and is *catastrophic* when it
displaces and an answer token of another meaning is among the three (other than y+ and
y−) whose probability rose most (``study.displacement_row``, the talk's classing).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence

import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.config import ModelConfig, TrainConfig
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.evidence import Check, Interval, mean_interval, share_interval
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.studies.likelihood_displacement.claims import ANY
from dpo_toolkit.studies.likelihood_displacement.persona import GROUP_OF, PersonaConfig, persona_corpus, train_persona_lm
from dpo_toolkit.studies.likelihood_displacement.study import displacement_row, lm_features, single_prompt_dpo

MAP_PAIRS = (("No", "Never"), ("Yes", "Sure"), ("Yes", "No"))
"""y+ is a lead token in each: two synonym pairs (the talk's No/Never, and its Sure/Yes turned
round so that y+ is the lead), and the talk's Yes/No of opposite meanings."""
MOST = 0.5  # C10-map: a cell displaces when π(y+) falls in at least half of its runs
# ANY (claims.py): "some run" and "more often", the claims' "> 0", read on per-seed shares


def rebalance(model: Transformer, scale: float) -> Transformer:
    """A copy of model computing the same function, with h divided by `scale` and W multiplied
    by it: the final LayerNorm's gain and bias / scale, the unembedding's weight × scale (its
    bias unchanged)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.ln_final.weight.div_(scale)
        copied.ln_final.bias.div_(scale)
        copied.unembed.weight.mul_(scale)
    return copied


@dataclasses.dataclass(frozen=True)
class MapGrid:
    """The map's axes. Every combination is a cell; each cell runs every seed and statement."""

    lead_weights: tuple[float, ...]
    scales: tuple[float, ...]
    optimizers: dict[str, float]  # optimizer name → its learning rate
    pairs: tuple[tuple[str, str], ...] = MAP_PAIRS

    def __post_init__(self) -> None:
        for name in ("lead_weights", "scales", "pairs"):
            if not getattr(self, name):
                raise ValueError(f"MapGrid.{name} must not be empty")
        if not self.optimizers:
            raise ValueError("MapGrid.optimizers must not be empty")


def run_map(
    cfg: PersonaConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    grid: MapGrid,
    beta: float,
    steps: int,
    seeds: Sequence[int],
    prompts_per_pair: int,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Every cell of the grid: for each seed and lead weight one LM fitted to the corpus, then,
    for each scale, pair, optimizer and the first `prompts_per_pair` statements of y+'s stance,
    single-prompt DPO (`steps` full steps) from the rebalanced LM. One row per run: the cell's
    coordinates, seed, statement, h_to_w (‖h‖² / mean ‖W_z‖² of the reference at that prompt)
    and ``displacement_row``'s columns."""
    device = resolve_device(device)
    rows = []
    for seed, lead in itertools.product(seeds, grid.lead_weights):
        corpus = dataclasses.replace(cfg, lead_weight=lead)
        prompts, stances, _ = persona_corpus(corpus)
        prompts = prompts.to(device)
        model = build_model(model_cfg, seed, device)
        train_persona_lm(corpus, model, sft_cfg)
        model.eval().requires_grad_(False)
        for scale in grid.scales:
            reference = rebalance(model, scale)
            for (y_pos, y_neg), (optimizer, lr) in itertools.product(grid.pairs, grid.optimizers.items()):
                train_cfg = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.0, epochs=steps, batch_size=1, grad_clip=None,
                                        n_evals=1)  # fmt: skip
                for i in [k for k, s in enumerate(stances) if s == GROUP_OF[y_pos]][:prompts_per_pair]:
                    h, W, _ = lm_features(reference, prompts[i])
                    before, after = single_prompt_dpo(
                        reference, prompts[i], corpus.token(y_pos), corpus.token(y_neg), beta, train_cfg
                    )
                    rows.append(
                        {
                            "lead_weight": lead,
                            "scale": scale,
                            "pair": f"{y_pos}/{y_neg}",
                            "similar": GROUP_OF[y_pos] == GROUP_OF[y_neg],
                            "optimizer": optimizer,
                            "lr": lr,
                            "seed": seed,
                            "statement": i,
                            "h_to_w": float((h @ h) / (W * W).sum(-1).mean()),
                            **displacement_row(corpus, before, after, y_pos, y_neg),
                        }
                    )
    return pd.DataFrame(rows)


CELL = ["optimizer", "pair", "lead_weight", "scale"]
CELL_MEANS = {"displaced": "displaced", "catastrophic": "is_catastrophic", "p_ref": "p_pos_before",
              "p_after": "p_pos_after", "h_to_w": "h_to_w"}  # fmt: skip
"""map_table's columns that average a column of the runs over each cell: its name → the runs' column."""


def map_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, every cell: runs, the share displaced and catastrophic, mean π_ref(y+)
    and π(y+) after DPO, and the mean ‖h‖² / ‖W_z‖²."""
    means = {name: (column, "mean") for name, column in CELL_MEANS.items()}
    return runs.groupby(CELL, sort=False).agg(runs=("displaced", "size"), **means).reset_index()


CLAIMS = {
    "C10-map": ClaimText(
        "[displacement map] Where the theory's conditions hold (π_ref(y+) high, h small against W, "
        "y+ and y− similar), single-prompt DPO in a trained LM lowers π(y+), sometimes catastrophically.",
        "displacement in OLMo-1B, Gemma-2B, Llama-3-8B, some of it catastrophic",
        "talk's table",
    ),
}


def map_claims(runs: pd.DataFrame) -> pd.DataFrame:
    """C10-map, beside C10 (the chapter's literal runs): where the theory's conditions are met,
    does DPO in the LM displace? Decided on intervals over seeds: every cell of one seed starts
    from that seed's LMs, so the runs of a cell share their seeds with every other cell and the
    replicates are the seeds. Reproduced if (a) the most displacing cell displaces in ≥ MOST of
    its runs (its Wilson interval, replicates = its seeds), (b) some run is catastrophic and
    (c) synonym pairs displace more often than pairs of opposite meaning (the theory's
    ⟨W_y+, W_y−⟩), (b) and (c) read per seed over the whole map; partly if the map displaces at
    all (per seed, the share of its runs in which π(y+) fell); not reproduced otherwise."""
    cells = map_table(runs)
    # picked as the best of many cells on the same runs, its share is an optimistic estimate (the
    # map has no fresh seeds to confirm it on): (a) is the claim's most lenient part
    best = cells.sort_values(["displaced", "catastrophic"], ascending=False).iloc[0]
    cell = f"{best['optimizer']}, {best['pair']}, lead weight {best['lead_weight']:g}, scale {best['scale']:g}"
    displaced = Check(
        "share of the map's runs in which π(y+) fell, per seed", mean_interval(runs.groupby("seed")["displaced"].mean()), ANY
    )
    row = {"claim_id": "C10-map", "our_value": _map_value(runs, cells, best, cell)}
    return claims_frame([{**row, **decide(_map_parts(runs, best, cell), part=displaced)}], text=CLAIMS)


def _map_parts(runs: pd.DataFrame, best: pd.Series, cell: str) -> list[Check]:
    """C10-map's three parts: (a) the most displacing cell (`best`, described by `cell`) displaces in
    most of its runs, (b) some run is catastrophic, (c) synonym pairs displace more often than
    pairs of opposite meaning; (b) and (c) per seed."""
    best_runs = runs[(runs[CELL] == best[CELL]).all(axis=1)]
    per_seed = runs.groupby("seed")
    # (c) per seed: the displaced share of its synonym-pair runs minus that of its opposite-meaning
    # runs; a seed without either kind of pair has no difference to give
    gap = (per_seed.apply(lambda g: g.loc[g["similar"], "displaced"].mean() - g.loc[~g["similar"], "displaced"].mean(),
                          include_groups=False)).dropna()  # fmt: skip
    most = Check(
        f"displaced share of the most displacing cell ({cell})",
        share_interval(int(best_runs["displaced"].sum()), len(best_runs), replicates=best_runs["seed"].nunique()),
        MOST,
    )
    return [
        most,
        Check("share of catastrophic runs per seed", mean_interval(per_seed["is_catastrophic"].mean()), ANY),
        Check(
            "displaced share, synonym minus opposite-meaning pairs, per seed",
            mean_interval(gap) if len(gap) else Interval(0, float("nan"), -math.inf, math.inf),
            ANY,
        ),
    ]


def _map_value(runs: pd.DataFrame, cells: pd.DataFrame, best: pd.Series, cell: str) -> str:
    """C10-map's measured values: the map's shares, its displacing cells, its most displacing
    cell and the displaced shares of synonym and opposite-meaning pairs."""
    by_similarity = runs.groupby("similar")["displaced"].mean()
    similar, opposite = float(by_similarity.get(True, float("nan"))), float(by_similarity.get(False, float("nan")))
    displacing = cells[cells["displaced"] >= MOST]
    return (
        f"{len(runs)} runs in {len(cells)} cells over {runs['seed'].nunique()} seeds: π(y+) fell in "
        f"{runs['displaced'].mean():.0%}, catastrophic in {runs['is_catastrophic'].mean():.0%}; "
        f"{len(displacing)} cells displace in ≥ {MOST:.0%} of runs; "
        f"most displacing cell: {cell} ({best['displaced']:.0%} displaced, {best['catastrophic']:.0%} catastrophic); "
        f"displaced share, synonym pairs {similar:.0%} vs opposite meanings {opposite:.0%}"
    )


def map_summary(runs: pd.DataFrame) -> str:
    """The map in words: the share of runs in which π(y+) fell along each axis, and for each of
    the talk's pairs the cells in which it displaced in most runs (or that it never did)."""

    def shares(column: str) -> str:
        by = runs.groupby(column, sort=True)["displaced"].mean()
        return ", ".join(f"{k:g}: {v:.0%}" if isinstance(k, float) else f"{k}: {v:.0%}" for k, v in by.items())

    cells = map_table(runs)
    lines = [
        f"π(y+) fell in {runs['displaced'].mean():.0%} of {len(runs)} runs. By optimizer — {shares('optimizer')}; "
        f"by π_ref(y+) (lead weight) — {shares('lead_weight')}; by rebalancing scale — {shares('scale')}; "
        f"by pair — {shares('pair')}."
    ]
    for pair in dict.fromkeys(runs["pair"]):
        displacing = cells[(cells["pair"] == pair) & (cells["displaced"] >= MOST)]
        where = "; ".join(f"{r.optimizer}, lead {r.lead_weight:g}, scale {r.scale:g}" for r in displacing.itertuples())
        lines.append(f"**{pair}** displaces in most runs of {len(displacing)} of {int((cells['pair'] == pair).sum())} cells"
                     + (f" ({where})." if where else "."))  # fmt: skip
    return " ".join(lines)
