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
from collections.abc import Sequence

import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.config import ModelConfig, TrainConfig
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.evidence import Check, mean_interval
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.studies.likelihood_displacement.map_runs import MapStart, trained_rows
from dpo_toolkit.studies.likelihood_displacement.persona import GROUP_OF, PersonaConfig, persona_corpus, train_persona_lms
from dpo_toolkit.studies.likelihood_displacement.single_prompt import HEADS
from dpo_toolkit.studies.likelihood_displacement.study import DISPLACED_BELOW

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
    heads: tuple[str, ...] = ("trained",)  # single_prompt.HEADS: the head trained, or frozen (W fixed, h trained)

    def __post_init__(self) -> None:
        if set(self.heads) - set(HEADS):
            raise ValueError(f"MapGrid.heads must be among {HEADS}, got {self.heads}")
        for name in ("lead_weights", "scales", "pairs", "heads"):
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
    for each scale, pair, head, optimizer and the first `prompts_per_pair` statements of y+'s stance,
    single-prompt DPO (`steps` full steps) from the rebalanced LM. The runs of one head and optimizer
    train as the members of one ensemble (``single_prompt_dpo_members``). One row per run: the cell's
    coordinates, seed, statement, h_to_w (‖h‖² / mean ‖W_z‖² of the reference at that prompt), the
    theory's variables (``theory_row``) and ``displacement_row``'s columns."""
    device = resolve_device(device)
    lms = [(seed, dataclasses.replace(cfg, lead_weight=lead), build_model(model_cfg, seed, device))
           for seed, lead in itertools.product(seeds, grid.lead_weights)]  # fmt: skip
    train_persona_lms([corpus for _, corpus, _ in lms], [model for *_, model in lms], sft_cfg)  # one ensemble
    starts, blocks = [], itertools.count()  # every run's start, before its head and optimizer, in the grid's order
    for seed, corpus, model in lms:
        prompts, stances, _ = persona_corpus(corpus)
        model.eval().requires_grad_(False)
        references = {scale: rebalance(model, scale) for scale in grid.scales}
        for scale, (y_pos, y_neg) in itertools.product(grid.scales, grid.pairs):
            block = next(blocks)
            for i in [k for k, s in enumerate(stances) if s == GROUP_OF[y_pos]][:prompts_per_pair]:
                cell = {"lead_weight": corpus.lead_weight, "scale": scale, "pair": f"{y_pos}/{y_neg}", "seed": seed,
                        "statement": i}  # fmt: skip
                starts.append(MapStart(corpus, references[scale], prompts[i].to(device), y_pos, y_neg, cell, block))
    return pd.DataFrame(trained_rows(starts, grid.heads, grid.optimizers, beta, steps))


CELL = ["head", "optimizer", "pair", "lead_weight", "scale"]
CELL_MEANS = {"displaced": "displaced", "catastrophic": "is_catastrophic", "p_ref": "p_pos_before",
              "p_after": "p_pos_after", "h_to_w": "h_to_w", "predicted": "predicted", "observed": "dlogp_pos",
              "agrees": "agrees"}  # fmt: skip
"""map_table's columns that average a column of the runs over each cell: its name → the runs' column."""


def map_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, every cell: runs, the share displaced and catastrophic, mean π_ref(y+)
    and π(y+) after DPO, and the mean ‖h‖² / ‖W_z‖²."""
    means = {name: (column, "mean") for name, column in CELL_MEANS.items()}
    return runs.groupby(CELL, sort=False).agg(runs=("displaced", "size"), **means).reset_index()


AGREE = 0.8  # C10-map: the predicted sign of Δ log π(y+) is the observed one in ≥ 80 % of runs
PRIMARY = ("sgd", "frozen")
"""The arm the theory describes: gradient descent (its first-order step), with the head frozen (the LM's
"W fixed, h trained"); with no frozen-head runs, SGD with the head trained. Other optimizers' effects are
reported as optimizer-induced displacement, never pooled with it."""

CLAIMS = {
    "C10-map": ClaimText(
        "[displacement map, the theory's variables] Under gradient descent, the one-step change of log π(y+) "
        "that the theory predicts from the LM's own h and W has the sign DPO produces, and π(y+) falls where it "
        "is predicted to fall.",
        "displacement in OLMo-1B, Gemma-2B, Llama-3-8B, explained by the unembedding geometry",
        "talk's table; paper §4 (one-step analysis)",
    ),
    "C10-frozen": ClaimText(
        "[head frozen] DPO on (No, Never) lowers π(No) and moves the mass to answers of the other meaning "
        "(the talk's OLMo row: No 0.85 → 0.01, the mass to Yes).",
        "OLMo-1B: π(No) 0.85 → 0.01, the mass to Yes",
        "talk's table",
    ),
}


def primary_arm(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs of PRIMARY (SGD, head frozen; else SGD with the head trained) and the arm's name."""
    sgd = runs[runs["optimizer"] == PRIMARY[0]]
    head = PRIMARY[1] if (sgd["head"] == PRIMARY[1]).any() else "trained"
    return sgd[sgd["head"] == head], f"SGD, head {head}"


def map_claims(runs: pd.DataFrame) -> pd.DataFrame:
    """C10-map, beside C10 (the chapter's literal runs), decided on the theory's own variable: in the
    primary arm (``primary_arm``), the share of runs whose observed sign of Δ log π(y+) is the
    predicted one (``study.theory_row``) reaches AGREE, per seed, and the runs predicted to displace
    displace in ≥ MOST of cases; partly when only the signs agree. Untestable where the primary arm
    has no runs, or where the theory predicts no displacement in any of them. C10-frozen: the
    talk's catastrophic row, (No, Never) under SGD with the head frozen, catastrophic in ≥ MOST of
    each seed's runs. Replicates are the seeds (each sets the LMs every cell starts from)."""
    primary, arm = primary_arm(runs)
    value = _map_value(runs, primary, arm)
    if primary.empty:
        row = {"verdict": "untestable here", "precondition": f"no {arm} runs in this map"}
        return claims_frame([{"claim_id": "C10-map", "our_value": value, **row}, _frozen_row(runs)], text=CLAIMS)
    agreement = Check(f"share of {arm} runs whose Δ log π(y+) has the predicted sign, per seed",
                      mean_interval(primary.groupby("seed")["agrees"].mean()), AGREE)  # fmt: skip
    predicted = primary[primary["predicted"] < 0]
    if predicted.empty:  # the claim's condition never holds: nothing to test it on (its signs are still reported)
        row = {"claim_id": "C10-map", "our_value": value, **decide(agreement, precondition=False)}
        row["precondition"] = f"the theory predicts displacement in none of the {len(primary)} {arm} runs"
        return claims_frame([row, _frozen_row(runs)], text=CLAIMS)
    where = Check(
        f"displaced share of the {arm} runs predicted to displace, per seed",
        mean_interval(predicted.groupby("seed")["displaced"].mean()),
        MOST,
    )
    row = {"claim_id": "C10-map", "our_value": value, **decide([agreement, where], part=agreement)}
    return claims_frame([row, _frozen_row(runs)], text=CLAIMS)


def _frozen_row(runs: pd.DataFrame) -> dict:
    """C10-frozen's row: (No, Never) under SGD with the head frozen, catastrophic per seed."""
    talk = runs[(runs["optimizer"] == "sgd") & (runs["head"] == "frozen") & (runs["pair"] == "No/Never")]
    if talk.empty:
        return {"claim_id": "C10-frozen", "our_value": "no (No, Never) runs under SGD with the head frozen",
                "verdict": "untestable here", "precondition": "the map has no SGD, head-frozen (No, Never) cell"}  # fmt: skip
    by_seed = talk.groupby("seed")
    gained = talk[["other_meaning_gain"]].mean().iloc[0]
    value = (
        f"plain SGD, head frozen: {len(talk)} runs over {talk['seed'].nunique()} seeds: π(No) "
        f"{talk['p_pos_before'].mean():.3f} → {talk['p_pos_after'].mean():.3f}, displaced in {talk['displaced'].mean():.0%}, "
        f"catastrophic in {talk['is_catastrophic'].mean():.0%}; answers of another meaning gained {gained:.3f} of mass on average"
    )
    check = Check("share of catastrophic (No, Never) runs, SGD with the head frozen, per seed",
                  mean_interval(by_seed["is_catastrophic"].mean()), MOST)  # fmt: skip
    return {"claim_id": "C10-frozen", "our_value": value, **decide(check)}


def _map_value(runs: pd.DataFrame, primary: pd.DataFrame, arm: str) -> str:
    """C10-map's measured values: sign agreement and displacement in the primary arm, y+'s rank in the
    projection, and each other arm's displaced share, named by its optimizer and head."""
    arms = runs.groupby(["optimizer", "head"])
    others = "; ".join(
        f"{o}, head {h}: displaced in {g['displaced'].mean():.0%}, signs agree in {g['agrees'].mean():.0%}" for (o, h), g in arms
    )
    if primary.empty:
        return f"no {arm} runs; {others}"
    predicted = primary[primary["predicted"] < 0]
    return (
        f"{arm}: {len(primary)} runs over {primary['seed'].nunique()} seeds; the predicted sign of Δ log π(y+) is the "
        f"observed one in {primary['agrees'].mean():.0%}; predicted to displace in {len(predicted)}, of which "
        f"{predicted['displaced'].mean() if len(predicted) else 0:.0%} displaced (≤ {DISPLACED_BELOW} nats); y+ leads "
        f"⟨W_z, W_y+ − W_y−⟩ in {(primary['rank_pos'] == 1).mean():.0%}. By arm (optimizer-induced displacement "
        f"under Adam and RMSprop is their own effect): {others}"
    )


def map_summary(runs: pd.DataFrame) -> str:
    """The map in words: first the theory's arm (SGD; head frozen, then trained): how often the predicted
    sign of Δ log π(y+) held and where π(y+) fell; then the share displaced along each axis, each
    optimizer named (Adam's and RMSprop's displacement is their own effect); then, per pair, the
    cells in which it displaced in most runs."""

    def shares(column: str) -> str:
        by = runs.groupby(column, sort=True)["displaced"].mean()
        return ", ".join(f"{k:g}: {v:.0%}" if isinstance(k, float) else f"{k}: {v:.0%}" for k, v in by.items())

    lines = []
    for head in ("frozen", "slow", "trained"):
        arm = runs[(runs["optimizer"] == "sgd") & (runs["head"] == head)]
        if len(arm):
            lines.append(
                f"**SGD, head {head}:** the predicted sign of Δ log π(y+) held in {arm['agrees'].mean():.0%} of "
                f"{len(arm)} runs; predicted to fall in {(arm['predicted'] < 0).mean():.0%}, fell (≤ {DISPLACED_BELOW} "
                f"nats) in {arm['displaced'].mean():.0%}, catastrophic in {arm['is_catastrophic'].mean():.0%}."
            )
    lines.append(
        f"Over all {len(runs)} runs π(y+) fell in {runs['displaced'].mean():.0%}. By optimizer — {shares('optimizer')}; "
        f"by head — {shares('head')}; by π_ref(y+) (lead weight) — {shares('lead_weight')}; by rebalancing scale — "
        f"{shares('scale')}; by pair — {shares('pair')}."
    )
    cells = map_table(runs)
    for pair in dict.fromkeys(runs["pair"]):
        displacing = cells[(cells["pair"] == pair) & (cells["displaced"] >= MOST)]
        where = "; ".join(
            f"{r.optimizer}, head {r.head}, lead {r.lead_weight:g}, scale {r.scale:g}" for r in displacing.itertuples()
        )
        lines.append(f"**{pair}** displaces in most runs of {len(displacing)} of {int((cells['pair'] == pair).sum())} cells"
                     + (f" ({where})." if where else "."))  # fmt: skip
    return " ".join(lines)
