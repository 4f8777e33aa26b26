"""The drift map's analysis and claims C22–C24, decided by code with thresholds fixed here before any run.

A run *drifts* when its greedy OOD rate on the test prompts at the horizon is ≥ DRIFT_OOD and at least
DRIFT_RISE above its reference's (``core.drift``: the grokking chapter's C2 thresholds, 50 % and 10 points),
read at each run's last checkpoint. A run whose loss, KL or OOD mass stops being finite has *diverged* (a
model of NaNs answers nothing parseable, which would read as 100 % OOD); a run that *collapses* (chance
accuracy with the loss at log 2, or ≥ 50 % OOD at its first checkpoint) broke rather than drifted. Both are
reported apart and never count as drifted, nor enter a drift estimate's OOD rates (``sound_runs``).

Claims are decided on intervals over independent seeds (``core.evidence``, ``claims.decide``): a share of
runs (the drift fraction) gets a Wilson interval, at the effective number of runs their correlation within
a seed allows where a seed has several (``clustered_share_interval``); a per-seed quantity, the interval
of its mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE, collapse_reasons, drifted
from dpo_toolkit.core.evidence import mean_interval
from dpo_toolkit.core.stats import spearman

from .design import GRID, PAPER_RECIPE

NEAR_ZERO = 0.05  # the drifting recipe is chosen among cells whose reference is ≤ 5 % OOD (seed mean), if any
IN_DISTRIBUTION = 0.15  # C23's precondition: the drifting recipe's reference is ≤ 15 % OOD (grokking's SFT_LOW)
MOST = 0.5  # "more than half": of a cell's seeds (C23), of the training pairs (C24 ordering), of drifted runs (C24)
RECIPE_FIELDS = ["optimizer", "lr", "beta", "batch_size", "epochs", "weight_decay", "train_size", "reference", "arm"]


def outcomes(curves: pd.DataFrame, epoch: float | None = None) -> pd.DataFrame:
    """One row per run (label, seed): the reference's OOD rate and mass (step 0), the run's at its
    last evaluation (or its last one at or before `epoch`), its peak OOD rate, the change of the
    mean log π(y_w) and log π(y_l) of the scored training pairs, accuracy and margin at the first
    checkpoint and at the end, `diverged` (a non-finite loss, KL or OOD mass up to then),
    `collapse` (``core.drift.collapse_reasons``: why the run collapsed, '' if it did not) and
    `drifted` (never for a diverged or collapsed run)."""
    keys = ["label", "seed"]
    curves = curves.sort_values([*keys, "step"])
    start = curves[curves["step"] == 0].set_index(keys)
    upto = curves if epoch is None else curves[curves["epoch"] <= epoch + 1e-9]
    end = upto.groupby(keys).tail(1).set_index(keys)  # the last row itself, NaNs included
    first = curves[curves["step"] > 0].groupby(keys).head(1).set_index(keys)
    trained = upto[upto["step"] > 0]
    finite = np.isfinite(trained[["loss", "kl", "ood_mass"]].to_numpy(dtype=float)).all(axis=1)
    diverged = (~pd.Series(finite, index=trained.index)).groupby([trained["label"], trained["seed"]]).any()
    out = start[RECIPE_FIELDS].copy()
    out["horizon"] = end["epoch"]
    out["reference_ood"], out["reference_ood_mass"] = start["ood_rate"], start["ood_mass"]
    out["ood"], out["ood_mass"], out["peak_ood"] = end["ood_rate"], end["ood_mass"], upto.groupby(keys)["ood_rate"].max()
    out["chosen_change"] = end["chosen_logp"] - start["chosen_logp"]
    out["rejected_change"] = end["rejected_logp"] - start["rejected_logp"]
    out["start_accuracy"], out["first_accuracy"], out["accuracy"] = start["accuracy"], first["accuracy"], end["accuracy"]
    out["first_margin"], out["margin"], out["kl"] = first["margin"], end["margin"], end["kl"]
    out["diverged"] = diverged.reindex(out.index, fill_value=False).astype(bool)
    out["first_ood"], out["end_loss"] = first["ood_rate"], end["loss"]
    out["collapse"] = collapse_reasons(out["accuracy"], out["end_loss"], out["first_ood"], out["ood"], out["reference_ood"])
    # the continuous outcome, against the run's own reference: the change of greedy OOD rate and of exact
    # OOD mass at the end, and the largest rise of the OOD rate along the run
    out["ood_change"] = out["ood"] - out["reference_ood"]
    out["mass_change"] = out["ood_mass"] - out["reference_ood_mass"]
    out["peak_change"] = out["peak_ood"] - out["reference_ood"]
    out["drifted"] = drifted(out["ood"], out["reference_ood"]) & ~out["diverged"] & (out["collapse"] == "")
    return out.reset_index()


def cell_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (recipe): seeds, drifted, collapsed and diverged seeds, the drift fraction,
    the change of OOD rate and of exact OOD mass against each seed's reference (mean over seeds with
    its 95 % interval: `ood_change_mean`, `_low`, `_high`, and the same for `mass_change`), the seeds
    whose OOD rate rose ≥ 10 points (`rose`), the final OOD rate and exact OOD mass (mean and sd
    over seeds) and the reference's, in the order of the runs."""
    grouped = runs.groupby("label", sort=False)
    table = grouped[RECIPE_FIELDS].first()
    table["seeds"] = grouped["seed"].size()
    if (table["seeds"] != grouped["seed"].nunique()).any():
        raise ValueError("cell_table: a (label, seed) appears twice; two cells share a label")
    table["drifted"] = grouped["drifted"].sum().astype(int)
    table["diverged"] = grouped["diverged"].sum().astype(int)
    table["collapsed"] = grouped["collapse"].apply(lambda c: int((c != "").sum()))
    table["drift_fraction"] = table["drifted"] / table["seeds"]
    # the primary, continuous outcome: the change of OOD rate against each seed's own reference, its
    # mean over seeds with a 95 % interval (core.evidence), and the share of seeds that rise ≥ 10 points
    for column in ("ood_change", "mass_change"):
        intervals = grouped[column].apply(mean_interval)
        table[f"{column}_mean"] = [i.estimate for i in intervals]
        table[f"{column}_low"], table[f"{column}_high"] = [i.low for i in intervals], [i.high for i in intervals]
    table["rose"] = grouped["ood_change"].apply(lambda c: int((c >= DRIFT_RISE - 1e-12).sum()))
    for column in ("ood", "ood_mass"):
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_sd"] = grouped[column].std(ddof=0)
    table["reference_ood"] = grouped["reference_ood"].mean()
    table["reference_ood_mass"] = grouped["reference_ood_mass"].mean()
    return table.reset_index()


def sound_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``outcomes`` whose run neither collapsed nor diverged (where drift estimates read OOD rates)."""
    return runs[(runs["collapse"] == "") & ~runs["diverged"].astype(bool)]


def collapse_regime(table: pd.DataFrame) -> pd.Series:
    """Per cell of a ``cell_table``: whether most of its seeds collapsed (a collapse regime, not drift)."""
    return table["collapsed"] > MOST * table["seeds"]


def graded_rise(table: pd.DataFrame) -> pd.Series:
    """Per cell of a ``cell_table``: whether its OOD rate rose ≥ DRIFT_RISE on average, interval clear of zero."""
    return (table["ood_change_low"] > 0) & (table["ood_change_mean"] >= DRIFT_RISE - 1e-12)


def drifting_recipe(table: pd.DataFrame) -> tuple[pd.Series, bool]:
    """The cell with the highest drift fraction (ties: the reference with less exact OOD mass, then higher
    mean final OOD, then the label) among cells whose reference is near-zero OOD (≤ NEAR_ZERO); else
    among those mostly in distribution (≤ IN_DISTRIBUTION), then among all. A cell where most
    seeds collapse is never chosen (while another is left). Returns it and whether near-zero held."""
    if table.empty:
        raise ValueError("drifting_recipe: the cell table is empty")
    sound = table[~collapse_regime(table)]
    table = sound if len(sound) else table
    for limit in (NEAR_ZERO, IN_DISTRIBUTION, np.inf):
        candidates = table[table["reference_ood"] <= limit]
        if len(candidates):
            break
    order = ["drift_fraction", "reference_ood_mass", "ood_mean", "label"]  # references by greedy OOD, then mass
    best = candidates.sort_values(order, ascending=[False, True, False, True]).iloc[0]
    return best, bool(limit == NEAR_ZERO)


def drifting_summary(
    best: pd.Series, near_zero: bool, confirmation: pd.DataFrame, confirmation_seeds: Sequence[int], runs: pd.DataFrame
) -> str:
    """In lines of plain text: the drifting recipe (`best`, `near_zero` from ``drifting_recipe``)
    with its seeds that drift, its final OOD rate and exact OOD mass (mean ± sd over seeds) and its
    reference's; its re-run on `confirmation_seeds` (``outcomes`` of those runs); and how many
    runs of the map (``outcomes``) diverged."""
    far = "" if near_zero else " (no cell's reference is near-zero OOD)"
    fresh = confirmation["ood"]
    return "\n".join(
        [
            f"drifting recipe: {best['label']} ({best['arm']})",
            f"  {best['drifted']}/{best['seeds']} seeds drift; final OOD rate {100 * best['ood_mean']:.0f} ± "
            f"{100 * best['ood_sd']:.0f} %, exact OOD mass {100 * best['ood_mass_mean']:.1f} %",
            f"  reference: OOD rate {100 * best['reference_ood']:.1f} %, "
            f"exact OOD mass {100 * best['reference_ood_mass']:.1f} %{far}",
            f"  on fresh seeds {confirmation_seeds}: {confirmation['drifted'].sum()}/{len(confirmation)} drift; "
            f"final OOD rate {100 * fresh.mean():.0f} ± {100 * fresh.std(ddof=0):.0f} %",
            f"  collapsed (chance accuracy at loss log 2, or an OOD jump at the first checkpoint): "
            f"{best['collapsed']}/{best['seeds']} seeds; on the fresh seeds {(confirmation['collapse'] != '').sum()}"
            f"/{len(confirmation)}",
            f"diverged runs in the map: {runs['diverged'].sum()} of {len(runs)}; collapsed: "
            f"{(runs['collapse'] != '').sum()} of {len(runs)}",
        ]
    )


def horizon_table(curves: pd.DataFrame, label: str, epochs: list[float]) -> pd.DataFrame:
    """The drift fraction and OOD rate of one cell's runs at each horizon (epochs along its run)."""
    run = curves[curves["label"] == label]
    rows = []
    for epoch in epochs:
        at = outcomes(run, epoch)
        rows.append({"epochs": epoch, "seeds": len(at), "drifted": int(at["drifted"].sum()),
                     "drift_fraction": float(at["drifted"].mean()), "ood_mean": float(at["ood"].mean()),
                     "ood_sd": float(at["ood"].std(ddof=0)), "ood_mass_mean": float(at["ood_mass"].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def beta_spread(curves: pd.DataFrame) -> pd.DataFrame:
    """How much β separates the KL of the grid's runs, per optimizer and learning rate: at the first checkpoint
    and at the end, the seed-mean KL's least and largest value over β, their ratio (near 1: β has not acted yet)
    and Spearman(β, KL)."""
    grid = curves[(curves["arm"] == GRID) & (curves["step"] > 0)]
    mean = grid.groupby(["optimizer", "lr", "beta", "step"], as_index=False)["kl"].mean()
    rows = []
    for (optimizer, lr), g in mean.groupby(["optimizer", "lr"], sort=False):
        row = {"optimizer": optimizer, "lr": lr}
        for name, step in (("first", g["step"].min()), ("final", g["step"].max())):
            at = g[g["step"] == step]
            row[f"{name}_kl_min"], row[f"{name}_kl_max"] = float(at["kl"].min()), float(at["kl"].max())
            row[f"{name}_ratio"] = row[f"{name}_kl_max"] / max(row[f"{name}_kl_min"], 1e-12)
            several = at["beta"].nunique() > 1  # with one β there is nothing for β to separate
            row[f"{name}_ratio"] = row[f"{name}_ratio"] if several else float("nan")
            row[f"{name}_spearman"] = spearman(at["beta"], at["kl"]) if several else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def mechanism(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """For every drifted run: its first checkpoint after step 0 with greedy OOD ≥ DRIFT_OOD (the onset)
    and, there, the share of scored training pairs with π(y_OOD) > π(y_w) > π(y_l) (`ordering`), the
    change of mean log π(y_w) and log π(y_l) from the reference, and the exact OOD mass; the
    same at the end; and the first checkpoint at which the ordering holds for most pairs."""
    rows = []
    for _, run in runs[runs["drifted"]].iterrows():
        curve = curves[(curves["label"] == run["label"]) & (curves["seed"] == run["seed"])].sort_values("step")
        start, end = curve.iloc[0], curve.iloc[-1]
        trained = curve[curve["step"] > 0]
        onset = trained[trained["ood_rate"] >= DRIFT_OOD].iloc[0]
        ordered = trained[trained["ordering"] > MOST]
        row = {"label": run["label"], "seed": run["seed"], "onset_epoch": onset["epoch"],
               "ordering_epoch": ordered["epoch"].iloc[0] if len(ordered) else float("nan")}  # fmt: skip
        for name, at in (("onset", onset), ("final", end)):
            row[f"{name}_ordering"] = at["ordering"]
            row[f"{name}_chosen_change"] = at["chosen_logp"] - start["chosen_logp"]
            row[f"{name}_rejected_change"] = at["rejected_logp"] - start["rejected_logp"]
            row[f"{name}_ood_mass"] = at["ood_mass"]
        rows.append(row)
    columns = ["label", "seed", "onset_epoch", "ordering_epoch"]
    columns += [f"{n}_{m}" for n in ("onset", "final") for m in ("ordering", "chosen_change", "rejected_change", "ood_mass")]
    return pd.DataFrame(rows, columns=columns)


def is_paper_recipe(table: pd.DataFrame) -> pd.Series:
    """Rows of the grid that are Park §3.3's DPO recipe (any β)."""
    match = table["arm"] == GRID
    for field, value in PAPER_RECIPE.items():
        match &= np.isclose(table[field], value) if isinstance(value, float) else table[field] == value
    return match


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """A cell table for reading: per cell its arm, seeds that drift or collapse, OOD change and rates in %."""
    return pd.DataFrame(
        {
            "recipe": table["label"],
            "arm": table["arm"],
            "seeds drifting": table["drifted"].astype(str) + "/" + table["seeds"].astype(str),
            "seeds collapsing": table["collapsed"].astype(str) + "/" + table["seeds"].astype(str),
            "OOD rate change, points [95 % CI]": [
                f"{100 * m:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}]" if np.isfinite(lo) else f"{100 * m:+.0f} (one seed)"
                for m, lo, hi in zip(table["ood_change_mean"], table["ood_change_low"], table["ood_change_high"], strict=True)
            ],
            "seeds rising ≥ 10 points": table["rose"].astype(str) + "/" + table["seeds"].astype(str),
            "final OOD rate (%)": [
                f"{100 * m:.0f} ± {100 * s:.0f}" for m, s in zip(table["ood_mean"], table["ood_sd"], strict=True)
            ],
            "final OOD mass (%)": [
                f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(table["ood_mass_mean"], table["ood_mass_sd"], strict=True)
            ],
            "reference OOD rate (%)": (100 * table["reference_ood"]).round(1),
            "reference OOD mass (%)": (100 * table["reference_ood_mass"]).round(1),
        }
    ).set_index("recipe")


def regime_summary(table: pd.DataFrame) -> str:
    """In words (Markdown): whether the paper's recipe drifts, and per optimizer where most seeds drift."""
    grid = table[table["arm"] == GRID]
    paper = grid[is_paper_recipe(grid)]
    if len(paper):
        drifted, runs = int(paper["drifted"].sum()), int(paper["seeds"].sum())
        opening = (f"**The paper's recipe as written {'does not drift' if drifted == 0 else 'drifts'} here**: "
                   f"{drifted} of its {runs} runs (RMSprop at 5e-5, every β and seed) drift.")  # fmt: skip
    else:
        opening = "The paper's recipe is not in this grid."
    lines = [opening, ""]
    for optimizer, cells in grid.groupby("optimizer", sort=False):
        hot = cells[cells["drift_fraction"] > MOST]
        if hot.empty:
            lines.append(f"- **{optimizer}**: no cell drifts in more than half its seeds "
                         f"(at most {cells['drifted'].max()} of {cells['seeds'].max()}).")  # fmt: skip
            continue
        parts = []
        for lr, at in hot.groupby("lr"):
            every = len(at) == (cells["lr"] == lr).sum()
            betas = "every β" if every else "β " + ", ".join(f"{b:g}" for b in at["beta"])
            parts.append(
                f"at lr {lr:g}, {betas} ({', '.join(f'{d}/{n}' for d, n in zip(at['drifted'], at['seeds'], strict=True))})"
            )
        lines.append(f"- **{optimizer}** drifts in more than half its seeds " + "; ".join(parts) + ".")
    return "\n".join([*lines, "", *_graded_lines(grid)])


def _graded_lines(grid: pd.DataFrame) -> list[str]:
    """Per optimizer (Markdown bullets): where most seeds collapse, and where the OOD rate rose ≥ DRIFT_RISE clear of zero."""
    lines = ["On the continuous outcome (the OOD rate's change against each seed's reference):"]
    for optimizer, cells in grid.groupby("optimizer", sort=False):
        collapse = cells[collapse_regime(cells)]
        sound = cells[~collapse_regime(cells)]
        graded = sound[graded_rise(sound)]
        parts = [f"collapses at {_where(collapse)}" if len(collapse) else "never collapses in most seeds"]
        rise = f"rises ≥ {100 * DRIFT_RISE:.0f} points"
        parts.append(f"{rise}, clear of zero, at {_where(graded)}" if len(graded)
                     else f"{rise} with an interval clear of zero in no cell outside a collapse")  # fmt: skip
        lines.append(f"- **{optimizer}** " + "; ".join(parts) + ".")
    return lines


def _where(cells: pd.DataFrame) -> str:
    """'lr 0.005 (every β), lr 0.0005 (β 0.01, 0.0316)' for a set of grid cells."""
    out = []
    for lr, at in cells.groupby("lr", sort=True):
        betas = ", ".join(f"{b:g} ({100 * c:+.0f})" for b, c in zip(at["beta"], at["ood_change_mean"], strict=True))
        out.append(f"lr {lr:g} (β {betas})")
    return "; ".join(out)
