"""The drift map's update-count axis: small adaptive learning rates and many updates, on Park's two
tasks at their full size (issue: Park's drift as a graded effect).

The grid of the map gives every cell 3 epochs; Park's drift in §4.1 builds up over hundreds of
epochs. Here each cell (task × optimizer × learning rate × β) is one long run per seed, read at
several horizons from the evaluations along it (`read_epochs`): with a constant learning rate and
the runner's per-epoch data order, the first k epochs of a long run *are* the k-epoch run
(tests/test_drift_updates.py checks it). Every seed has its own SFT reference, so a cell's outcome
is never one reference's luck.

The tasks, at Park's full data (``TASK_DATA``):

- 'grokking': §4.1's task, W = 5, S = 1–99 (30 % of the prompts held out), from §4.1's SFT
  reference (AdamW 1e-4, weight decay 0.01, batch 512, clip 5);
- 'kl_sweep': §4.2's task, W = 10, S = [100, 500] (half held out), from §4.2's SFT reference
  (Adam 1e-3, batch 16) — the KL sweep's task at its full size, where Park's DPO recipe
  (RMSprop 5e-5, batch 16, 3 epochs) is the cell rmsprop 5e-5 read at 3 epochs (C22-full).

The outcome is continuous first (``analysis.outcomes``): the change of the greedy OOD rate and of
the exact OOD mass against each seed's own reference, at each horizon, with its interval over
seeds; collapses (``core.drift``) are reported apart, never as drift.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_toolkit.core.config import DataConfig, require
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.drift import DRIFT_OOD, DRIFT_RISE
from dpo_toolkit.core.evidence import CONFIDENCE, Interval, mean_interval
from dpo_toolkit.core.parameters import steps

from .analysis import MOST, cell_table, collapse_regime, graded_rise, outcomes, sound_runs
from .design import ADAPTIVE, TASK_DATA, UPDATES, Recipe
from .runs import MapSetup, run_recipes

TASKS = tuple(TASK_DATA)
TASK_REFERENCE = {"grokking": "grokking", "kl_sweep": "kl_sweep"}  # each task's SFT recipe (design.REFERENCES)
SMALL_LR = 5e-5  # the small-step corner: learning rate ≤ 5e-5 …
MANY_EPOCHS = 30  # … read at ≥ 30 epochs; the corner the map must never cut
LEARNED = 0.7  # a run learned the preferences when its held-out accuracy ends ≥ 0.7 (C23, the drifting recipe)


def task_data(task: str, split_seed: int) -> DataConfig:
    """The DataConfig of one task at Park's full size (TASK_DATA), split with `split_seed`."""
    if task not in TASK_DATA:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    return DataConfig(**TASK_DATA[task], seed=split_seed)


@dataclass(frozen=True)
class UpdateAxis:
    """One task's cells: every optimizer × learning rate × β, each one run of max(read_epochs)
    epochs per seed, read at every epoch of `read_epochs`."""

    task: str
    """One of TASKS."""
    optimizers: tuple[str, ...]
    """Adaptive DPO optimizers (ADAPTIVE)."""
    lrs: tuple[float, ...]
    """DPO learning rates, each in (0, 1]."""
    betas: tuple[float, ...]
    """KL strengths β."""
    read_epochs: tuple[int, ...]
    """The horizons read along each run, increasing; the run lasts the last one."""
    batch_size: int = 16
    """Pairs per optimizer step (Park §3.3's DPO)."""
    eval_every: int = 1
    """Epochs between evaluations along each run; every read epoch is a multiple of it."""

    def __post_init__(self) -> None:
        require(self.task in TASKS, self, "task", f"one of {TASKS}")
        require(len(self.optimizers) > 0 and set(self.optimizers) <= set(ADAPTIVE), self, "optimizers",
                f"a non-empty list of {ADAPTIVE}")  # fmt: skip
        epochs = list(self.read_epochs)
        require(len(epochs) > 0 and all(isinstance(e, int) and e >= 1 for e in epochs) and epochs == sorted(set(epochs)),
                self, "read_epochs", "increasing integers ≥ 1")  # fmt: skip
        require(isinstance(self.eval_every, int) and self.eval_every >= 1 and all(e % self.eval_every == 0 for e in epochs),
                self, "eval_every", f"an integer ≥ 1 dividing every read epoch {epochs}")  # fmt: skip
        self.recipes()  # validates lr, β and batch size (Recipe)

    @property
    def epochs(self) -> int:
        return max(self.read_epochs)

    def recipes(self) -> list[Recipe]:
        """The long runs, one per cell, labelled with the update arm and the task's reference."""
        return [
            Recipe(optimizer, lr, beta, self.batch_size, self.epochs, reference=TASK_REFERENCE[self.task], arm=UPDATES)
            for optimizer in self.optimizers
            for lr in self.lrs
            for beta in self.betas
        ]  # fmt: skip


def update_axes(
    tasks: Sequence[str], optimizers: dict, lrs: Sequence[float], betas: Sequence[float], read_epochs: dict
) -> list[UpdateAxis]:
    """One UpdateAxis per task of `tasks`, each with its own optimizers (`optimizers[task]`) and
    horizons (`read_epochs[task]`), evaluated every gcd(horizons) epochs (as sparsely as the
    horizons allow: an evaluation of a long run costs as much as hundreds of updates)."""
    return [UpdateAxis(t, tuple(optimizers[t]), tuple(lrs), tuple(betas), tuple(read_epochs[t]),
                       eval_every=math.gcd(*read_epochs[t])) for t in tasks]  # fmt: skip


def run_updates(
    axes: Sequence[UpdateAxis],
    setup: MapSetup,
    seeds: Sequence[int],
    cache_dir: str | Path,
    device: str = "cpu",
    members: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every axis's cells with every seed, each task on its own data (``task_data``, split as
    `setup`'s) from its own SFT reference per seed, evaluated every axis.eval_every epochs (so every
    read epoch is an evaluation). Returns the curves (``runs.run_recipes``) and ``read_along`` of them, both with
    a `task` column. Cached and resumed by the runner. `members`: the seeds of a cell train as members of one
    ensemble (True), or each seed alone (``runs.run_recipes``)."""
    curves, read = [], []
    for axis in axes:
        task_setup = dataclasses.replace(setup, data=task_data(axis.task, setup.data.seed), evals_per_epoch=1,
                                         epochs_per_eval=axis.eval_every)  # fmt: skip
        runs = run_recipes(axis.recipes(), seeds, task_setup, cache_dir, device=device, members=members).assign(task=axis.task)
        train, _ = make_pairs(task_setup.data)
        curves.append(runs)
        read.append(read_along(runs, axis.read_epochs, steps(len(train), axis.batch_size)).assign(task=axis.task))
    return pd.concat(curves, ignore_index=True), pd.concat(read, ignore_index=True)


def read_along(curves: pd.DataFrame, read_epochs: tuple[int, ...], steps_per_epoch: int) -> pd.DataFrame:
    """``analysis.outcomes`` of every run at each horizon of `read_epochs`, with `read_epoch` and
    `updates` (optimizer steps up to it) columns: one row per run and horizon."""
    frames = [outcomes(curves, float(e)).assign(read_epoch=e, updates=e * steps_per_epoch) for e in read_epochs]
    return pd.concat(frames, ignore_index=True)


def update_cells(read: pd.DataFrame) -> pd.DataFrame:
    """``analysis.cell_table`` at each horizon (one row per cell and read epoch), with the cell's
    end accuracy (mean over seeds) and whether it is a collapse regime (most seeds collapse)."""
    frames = []
    for (task, epoch, updates), at in read.groupby(["task", "read_epoch", "updates"], sort=True):
        table = cell_table(at)
        accuracy = at.groupby("label", sort=False)["accuracy"].mean()
        frames.append(table.assign(task=task, read_epoch=epoch, updates=updates, accuracy_mean=table["label"].map(accuracy)))
    cells = pd.concat(frames, ignore_index=True)
    cells["collapse_regime"] = collapse_regime(cells)
    return cells


def update_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per cell and evaluation: the change of the greedy OOD rate and of the exact OOD mass against
    each seed's reference, mean over seeds with its 95 % interval (the bands of the figure)."""
    start = curves.loc[curves["step"] == 0, ["label", "seed", "ood_rate", "ood_mass"]]
    moved = curves.merge(start, on=["label", "seed"], how="left", suffixes=("", "_reference"))
    moved["ood_change"] = moved["ood_rate"] - moved["ood_rate_reference"]
    moved["mass_change"] = moved["ood_mass"] - moved["ood_mass_reference"]
    rows = []
    for (label, step), at in moved.groupby(["label", "step"], sort=False):
        first = at.iloc[0]
        row = {"task": first["task"], "label": label, "optimizer": first["optimizer"], "lr": first["lr"],
               "beta": first["beta"], "step": step, "epoch": first["epoch"], "seeds": len(at)}  # fmt: skip
        for column in ("ood_change", "mass_change"):
            i = mean_interval(at[column])
            row |= {f"{column}_mean": i.estimate, f"{column}_low": i.low, f"{column}_high": i.high}
        rows.append(row)
    return pd.DataFrame(rows)


def corner(cells: pd.DataFrame) -> pd.DataFrame:
    """The small-step, many-update corner: cells at lr ≤ SMALL_LR read at ≥ MANY_EPOCHS, outside a
    collapse regime."""
    return cells[(cells["lr"] <= SMALL_LR * (1 + 1e-9)) & (cells["read_epoch"] >= MANY_EPOCHS) & ~cells["collapse_regime"]]


def when_it_drifts(cells: pd.DataFrame) -> str:
    """One sentence per task (paragraphs), from ``update_cells``: where the OOD rate rises ≥
    DRIFT_RISE with its interval clear of zero outside a collapse, where most seeds pass the ≥
    DRIFT_OOD drift rule, and where most seeds collapse."""
    return "\n\n".join(_task_sentence(at, task) for task, at in cells.groupby("task", sort=False))


def _task_sentence(cells: pd.DataFrame, task: str) -> str:
    sound = cells[~cells["collapse_regime"]]
    graded = sound[graded_rise(sound)]
    rule = sound[sound["drift_fraction"] > MOST]
    collapsed = cells[cells["collapse_regime"]]
    parts = [
        f"the OOD rate rises ≥ {100 * DRIFT_RISE:.0f} points, clear of zero, at {_cells(graded)}" if len(graded)
        else f"the OOD rate rises ≥ {100 * DRIFT_RISE:.0f} points clear of zero in no cell outside a collapse",
        f"most seeds pass the ≥ {100 * DRIFT_OOD:.0f} % drift rule at {_cells(rule)}" if len(rule)
        else f"no cell passes the ≥ {100 * DRIFT_OOD:.0f} % drift rule in most seeds",
        f"most seeds collapse at {_cells(collapsed)}" if len(collapsed) else "no cell collapses in most seeds",
    ]  # fmt: skip
    return f"**On the {task.replace('_', ' ')} task**, " + "; ".join(parts) + "."


def _cells(cells: pd.DataFrame) -> str:
    """'adamw lr 5e-05 β 0.01 at 30 epochs (+12 points), …', the first cell of each recipe that qualifies."""
    first = cells.sort_values("read_epoch").groupby("label", sort=False).head(1)
    return ", ".join(
        f"{r.optimizer} lr {r.lr:g} β {r.beta:g} from {r.read_epoch} epochs "
        f"({r.updates} updates, {100 * r.ood_change_mean:+.0f} points)"
        for r in first.sort_values(["optimizer", "lr", "beta"]).itertuples()
    )  # fmt: skip


def largest(read: pd.DataFrame, cells: pd.DataFrame, column: str) -> tuple[Interval, str]:
    """The largest cell mean of `column` over `cells` (rows of ``update_cells``, outside a collapse regime)
    with a simultaneous 95 % interval for it: each cell's interval over its seeds that neither collapsed
    nor diverged (rows of `read`, ``analysis.sound_runs``: a collapse is not drift) at the Bonferroni
    level 1 − 0.05/k for k cells, so that all k hold at once with 95 % and the largest mean lies
    between the largest low and the largest high. Returns it and where the largest estimate is."""
    level, read = 1 - (1 - CONFIDENCE) / len(cells), sound_runs(read)
    intervals = [
        mean_interval(read.loc[(read["label"] == r.label) & (read["read_epoch"] == r.read_epoch), column], confidence=level)
        for r in cells.itertuples()
    ]
    best = int(np.argmax([i.estimate for i in intervals]))
    where = f"{cells['label'].iloc[best]} at {cells['read_epoch'].iloc[best]} epochs"
    n = min(i.n for i in intervals)
    return Interval(n, intervals[best].estimate, max(i.low for i in intervals), max(i.high for i in intervals)), where


def drifting_cell(read: pd.DataFrame, cells: pd.DataFrame, task: str = "kl_sweep") -> pd.Series | None:
    """The drifting recipe the other chapters use (issue: Park's drift as a graded effect, item 5):
    among `task`'s cells at every horizon (``update_cells``) outside a collapse regime, whose mean
    held-out accuracy ends ≥ LEARNED and whose OOD rate's 95 % interval over the seeds that neither
    collapsed nor diverged (rows of `read`, ``analysis.sound_runs``) is clear above DRIFT_OOD, the one
    with the fewest updates, then the smallest learning rate, then the highest accuracy; with its
    interval (`ood_low`, `ood_high`). None when no cell qualifies."""
    mine = cells[(cells["task"] == task) & ~cells["collapse_regime"] & (cells["accuracy_mean"] >= LEARNED)]
    rows, of_task = [], sound_runs(read[read["task"] == task])
    for r in mine.itertuples():
        i = mean_interval(of_task.loc[(of_task["label"] == r.label) & (of_task["read_epoch"] == r.read_epoch), "ood"])
        if i.low > DRIFT_OOD:
            rows.append({**mine.loc[r.Index].to_dict(), "ood_low": i.low, "ood_high": i.high})
    if not rows:
        return None
    found = pd.DataFrame(rows).sort_values(["updates", "lr", "accuracy_mean"], ascending=[True, True, False])
    return found.iloc[0]
