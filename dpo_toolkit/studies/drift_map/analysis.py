"""The drift map's analysis and claims C22–C24, decided by code with thresholds fixed here
before any run.

A run *drifts* when its greedy OOD rate on the test prompts at the horizon is ≥ DRIFT_OOD
and at least DRIFT_RISE above its reference's (``core.drift``: the thresholds of the grokking
chapter's C2, 50 % and 10 points), applied here to each run's last checkpoint rather than to
a seed-mean curve's tail. A run whose loss, KL or OOD mass stops being finite has *diverged*: it is
reported apart and never counts as drifted (a model of NaNs answers nothing parseable, which
the OOD rate would otherwise read as 100 % OOD).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpo_toolkit.core.claims import UNTESTABLE, claims_frame, decide
from dpo_toolkit.core.drift import DRIFT_OOD, drifted
from dpo_toolkit.core.evidence import Check, Interval, mean_interval, share_interval
from dpo_toolkit.core.stats import spearman

from .design import GRID, PAPER_RECIPE

NEAR_ZERO = 0.05  # the drifting recipe is chosen among cells whose reference is ≤ 5 % OOD (seed mean), if any
IN_DISTRIBUTION = 0.15  # C23's precondition: the drifting recipe's reference is ≤ 15 % OOD (grokking's SFT_LOW)
ABOUT_80 = 0.6  # C23: "about 80 %" — the drifted runs end at ≥ 60 % OOD on average
MOST = 0.5  # "more than half": of a cell's seeds (C23), of the training pairs (C24 ordering), of drifted runs (C24)
SOME = 0.2  # C22 partly: at least one run in five drifts
SPECIFIC = 0.2  # C24: both log-probs fall in ≥ 20 points more of the drifted runs than of the others
RECIPE_FIELDS = ["optimizer", "lr", "beta", "batch_size", "epochs", "weight_decay", "train_size", "reference", "arm"]


def outcomes(curves: pd.DataFrame, epoch: float | None = None) -> pd.DataFrame:
    """One row per run (label, seed): the reference's OOD rate and mass (step 0), the run's at its
    last evaluation (or its last one at or before `epoch`), its peak OOD rate, the change of the
    mean log π(y_w) and log π(y_l) of the scored training pairs, accuracy and margin at the first
    checkpoint and at the end, `diverged` (a non-finite loss, KL or OOD mass up to then) and
    `drifted` (never for a diverged run)."""
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
    out["first_accuracy"], out["accuracy"] = first["accuracy"], end["accuracy"]
    out["first_margin"], out["margin"], out["kl"] = first["margin"], end["margin"], end["kl"]
    out["diverged"] = diverged.reindex(out.index, fill_value=False).astype(bool)
    out["drifted"] = drifted(out["ood"], out["reference_ood"]) & ~out["diverged"]
    return out.reset_index()


def cell_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (recipe): seeds, drifted seeds, the drift fraction, the final OOD rate and
    exact OOD mass (mean and sd over seeds) and the reference's, in the order of the runs."""
    grouped = runs.groupby("label", sort=False)
    table = grouped[RECIPE_FIELDS].first()
    table["seeds"] = grouped["seed"].size()
    if (table["seeds"] != grouped["seed"].nunique()).any():
        raise ValueError("cell_table: a (label, seed) appears twice; two cells share a label")
    table["drifted"] = grouped["drifted"].sum().astype(int)
    table["diverged"] = grouped["diverged"].sum().astype(int)
    table["drift_fraction"] = table["drifted"] / table["seeds"]
    for column in ("ood", "ood_mass"):
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_sd"] = grouped[column].std(ddof=0)
    table["reference_ood"] = grouped["reference_ood"].mean()
    table["reference_ood_mass"] = grouped["reference_ood_mass"].mean()
    return table.reset_index()


def drifting_recipe(table: pd.DataFrame) -> tuple[pd.Series, bool]:
    """The cell with the highest drift fraction (ties: higher mean final OOD, then the label)
    among cells whose reference is near-zero OOD (≤ NEAR_ZERO); when none is, among cells whose
    reference is mostly in distribution (≤ IN_DISTRIBUTION), then among all. Returns it and
    whether the near-zero condition could be met."""
    if table.empty:
        raise ValueError("drifting_recipe: the cell table is empty")
    for limit in (NEAR_ZERO, IN_DISTRIBUTION, np.inf):
        candidates = table[table["reference_ood"] <= limit]
        if len(candidates):
            break
    best = candidates.sort_values(["drift_fraction", "ood_mean", "label"], ascending=[False, False, True]).iloc[0]
    return best, bool(limit == NEAR_ZERO)


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
    """How much β separates the KL of the grid's runs, per optimizer and learning rate: at the
    first checkpoint and at the end, the seed-mean KL's smallest and largest value over β, their
    ratio, and Spearman(β, KL). A ratio near 1 means β has not acted yet."""
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


def both_fell(changes: pd.DataFrame, chosen: str, rejected: str) -> pd.Series:
    """Whether the mean log π(y_w) and log π(y_l) both fell from the reference, per row."""
    return (changes[chosen] < 0) & (changes[rejected] < 0)


def _unmeasured(name: str, threshold: float, above: bool, replicates: int) -> Check:
    """A check on a quantity these runs do not define (no run to read it on): its interval is
    the whole line, so it never holds or fails; `replicates` is the seeds behind the runs, so
    that ``decide`` still reads the precondition that explains the gap."""
    return Check(name, Interval(replicates, float("nan"), -math.inf, math.inf), threshold, above)


def map_claims(
    runs: pd.DataFrame, table: pd.DataFrame, mechanisms: pd.DataFrame, confirmation: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Claims C22–C24 from the runs (``outcomes``), the cells (``cell_table``), ``mechanism``, and
    the drifting recipe re-run on fresh seeds (`confirmation`, its ``outcomes``; C23 is decided on
    them when given, since the recipe was picked as the best of many cells on the map's own seeds).

    Every verdict is decided on intervals over independent seeds (``core.evidence``): a seed sets
    the reference, the initialisation and the data order, so the runs of one seed in different
    cells (β, optimizer, …) are not independent. A share of runs (drifted, both log-probs fell,
    rising) gets a Wilson interval whose replicates are the seeds behind those runs."""
    paper = runs[is_paper_recipe(runs)]
    by_beta = ", ".join(f"β={b:.3g}: {int(g['drifted'].sum())}/{len(g)}" for b, g in paper.groupby("beta"))
    c22 = {
        "claim_id": "C22",
        "statement": "Park's DPO recipe for the KL sweep (RMSprop at 5e-5, batch 16, 3 epochs) drives the policy "
        "out of distribution.",
        "paper_value": "policy A (β = 0.01) goes OOD (§4.3), the drift §4.2–4.3 study",
        "precondition": f"the paper's recipe is in the grid: {len(paper)} runs",
    }
    if len(paper):
        # the drifted share of the recipe's runs (every β and seed), its replicates the seeds
        share = share_interval(int(paper["drifted"].sum()), len(paper), replicates=paper["seed"].nunique())
        name = "share of the paper recipe's runs that drift"
        c22 |= {
            "our_value": f"{int(paper['drifted'].sum())} of {len(paper)} runs drift ({by_beta}) over "
            f"{paper['seed'].nunique()} seeds; final OOD {100 * paper['ood'].mean():.0f} ± "
            f"{100 * paper['ood'].std(ddof=0):.0f} % from a reference at {100 * paper['reference_ood'].mean():.0f} %",
            **decide(Check(name, share, MOST), part=Check(name, share, SOME)),
        }
    else:  # a fact of the design, not of the runs: there is nothing to put an interval on
        c22 |= {"our_value": "the recipe is not in this map's grid", "verdict": UNTESTABLE}

    best, near_zero = drifting_recipe(table)
    fresh = confirmation is not None and len(confirmation) > 0
    mine = confirmation if fresh else runs[runs["label"] == best["label"]]
    drifted_runs = mine[mine["drifted"]]
    n_seeds = mine["seed"].nunique()  # one run per seed: each fresh seed is its own replicate
    rose = (drifted_runs["margin"] > drifted_runs["first_margin"]) & (drifted_runs["accuracy"] >= drifted_runs["first_accuracy"])
    rising = float(rose.mean()) if len(drifted_runs) else 0.0
    drifted_ood = float(drifted_runs["ood"].mean()) if len(drifted_runs) else float("nan")
    fraction = Check("drift fraction", share_interval(len(drifted_runs), len(mine), replicates=n_seeds), MOST)
    full = [fraction]
    # The OOD level and the rising margin are read on the drifted seeds only (one value per
    # drifted seed): they join the claim unless the drift fraction already fails it, so that two
    # drifted seeds of twenty cannot turn a clear failure into "too few replicates".
    if len(drifted_runs) and fraction.outcome is not False:
        full += [
            Check("final OOD rate of the drifted runs", mean_interval(drifted_runs["ood"]), ABOUT_80),
            Check("share of drifted runs whose margin rose and accuracy did not fall",
                  share_interval(int(rose.sum()), len(drifted_runs), replicates=drifted_runs["seed"].nunique()), MOST),
        ]  # fmt: skip
    # the precondition, measured on the references of the runs that decide (one per seed)
    reference = Check("reference OOD rate", mean_interval(mine["reference_ood"]), IN_DISTRIBUTION, above=False)
    where = f"on {len(mine)} fresh seeds" if fresh else f"on the map's {len(mine)} seeds (no fresh seeds)"
    c23 = {
        "claim_id": "C23",
        "statement": "Somewhere on the map DPO drifts to about 80 % OOD while reward margin and accuracy keep rising.",
        "paper_value": "≈ 80 % OOD, margin and accuracy rising (§4.1)",
        "our_value": f"drifting recipe {best['label']} ({best['drifted']}/{best['seeds']} of the map's seeds drift); "
        f"{where}: {len(drifted_runs)}/{len(mine)} drift, to {100 * drifted_ood:.0f} % OOD on average; margin "
        f"rose and accuracy did not fall in {100 * rising:.0f} % of them; {(table['drift_fraction'] > MOST).sum()} of "
        f"{len(table)} cells drift in more than half their seeds",
        **decide(full, part=fraction, precondition=reference),
        "precondition": f"the drifting recipe's reference is ≤ {IN_DISTRIBUTION:.0%} OOD: {100 * mine['reference_ood'].mean():.0f} "
        f"± {100 * mine['reference_ood'].std(ddof=0):.0f} % over the {n_seeds} deciding seeds "
        f"({best['reference_ood']:.0%} on the map's)" + ("" if near_zero else f" (no cell's reference is ≤ {NEAR_ZERO:.0%} OOD)"),
    }

    n = len(mechanisms)
    onset_fell = both_fell(mechanisms, "onset_chosen_change", "onset_rejected_change") if n else pd.Series(dtype=bool)
    fell = float(onset_fell.mean()) if n else float("nan")
    calm = runs[~runs["drifted"] & ~runs["diverged"]]
    calm_fell = float(both_fell(calm, "chosen_change", "rejected_change").mean()) if len(calm) else float("nan")
    ordering = mechanisms["onset_ordering"].dropna() if n else pd.Series(dtype=float)
    fell_name = "share of drifted runs in which both log-probs fell at the onset"
    if n:
        fell_check = Check(fell_name, share_interval(int(onset_fell.sum()), n, replicates=mechanisms["seed"].nunique()), MOST)
    else:
        fell_check = _unmeasured(fell_name, MOST, True, runs["seed"].nunique())
    full = [fell_check]
    if n and len(calm):
        # Specificity per seed: the share of the seed's drifted runs whose log-probs both fell at
        # the onset minus the share of its runs that did not drift whose log-probs both fell by
        # the end, over the seeds that have both kinds of run.
        by_seed = pd.DataFrame(
            {
                "drifted": onset_fell.groupby(mechanisms["seed"]).mean(),
                "calm": both_fell(calm, "chosen_change", "rejected_change").groupby(calm["seed"]).mean(),
            }
        ).dropna()
        name = "drifted-minus-calm share with both log-probs falling, per seed"
        gap = by_seed["drifted"] - by_seed["calm"]
        full.append(Check(name, mean_interval(gap), SPECIFIC) if len(gap) else _unmeasured(name, SPECIFIC, True, 0))
    c24 = {
        "claim_id": "C24",
        "statement": "Where DPO drifts, π(y_OOD) > π(y_w) > π(y_l), with the log-probabilities of both y_w and y_l falling.",
        "paper_value": "the ordering, with both falling (§4.1)",
        "our_value": f"both mean log-probs had fallen at the onset of drift in {100 * fell:.0f} % of {n} drifted runs, "
        f"and by the end in {100 * calm_fell:.0f} % of {len(calm)} runs that did not drift; the ordering held for most "
        f"training pairs with an OOD greedy answer in {100 * (ordering > MOST).mean() if len(ordering) else 0:.0f} % of "
        f"the {len(ordering)} drifted runs that had such pairs",
        **decide(full, part=fell_check, precondition=n > 0),
        "precondition": f"at least one run drifts: {n}",
    }
    return claims_frame([c22, c23, c24])


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """A cell table for reading: one row per cell with its arm, the seeds that drift, and the
    final greedy OOD rate, exact OOD mass and the reference's OOD rate in % (mean ± sd over seeds)."""
    return pd.DataFrame(
        {
            "recipe": table["label"],
            "arm": table["arm"],
            "seeds drifting": table["drifted"].astype(str) + "/" + table["seeds"].astype(str),
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
    """In words: whether the paper's recipe drifts, and, per optimizer of the grid, the learning
    rates and β at which more than half the seeds drift (Markdown)."""
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
    return "\n".join(lines)
