"""The drift map's design, fixed before any run: the recipes (cells), the grid over optimizer ×
learning rate × β, the one-knob-at-a-time arms around a base recipe, and the notebook's
parameters.

A *recipe* is everything a DPO run depends on except its seed; a *cell* of the map is one
recipe run with every seed. Drift is decided per run by ``core.drift.drifted``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dpo_toolkit.core import parameters as p
from dpo_toolkit.core import validate as v
from dpo_toolkit.core.config import OPTIMIZERS, DPOConfig, require
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.validate import is_int
from dpo_toolkit.recipes import parameter_sets as sets
from dpo_toolkit.recipes.sft_then_dpo import SFT_RECIPES

REFERENCES = SFT_RECIPES
"""The SFT recipes a reference can come from (``park.sft_recipe``): Park §4.2's (Adam 1e-3, batch 16,
10 epochs, no weight decay, no clipping) and §4.1's (AdamW 1e-4, weight decay 0.01, batch 512, 100 epochs, clip 5)."""

PAPER_RECIPE = {"optimizer": "rmsprop", "lr": 5e-5, "batch_size": 16, "epochs": 3, "weight_decay": 0.0}
"""Park §3.3's DPO recipe for the KL sweep (all β): the grid cells with these knobs are 'the paper's recipe'."""

GRID, UPDATES = "grid", "updates"  # the grid's cells; the update-count axis's long runs (updates.py)
ARMS = ("batch size", "weight decay", "horizon", "training set", "reference", UPDATES)
TASK_DATA = {  # the update axis's tasks at Park's full data: the number line's S, W and held-out share
    "grokking": {"prompt_min": 1, "prompt_max": 99, "window": 5, "test_fraction": 0.3},  # Park §4.1
    "kl_sweep": {"prompt_min": 100, "prompt_max": 500, "window": 10, "test_fraction": 0.5},  # Park §4.2
}
ADAPTIVE = ("adam", "adamw", "rmsprop")  # the update axis crosses adaptive optimizers only (Park's)


@dataclass(frozen=True)
class Recipe:
    """One cell of the map: a DPO recipe, run once per seed from that seed's SFT reference."""

    optimizer: str
    """DPO optimizer, one of OPTIMIZERS (torch defaults apart from lr and weight decay; SGD without momentum)."""
    lr: float
    """DPO learning rate, in (0, 1]."""
    beta: float
    """KL strength β, in (0, 1000]."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    epochs: int = 3
    """Passes over the training pairs: the horizon."""
    weight_decay: float = 0.0
    """Decoupled for AdamW, L2 otherwise."""
    train_size: int | None = None
    """Training pairs: a random subset of this many (drawn per seed), or all of them when None."""
    reference: str = "kl_sweep"
    """The SFT recipe of the reference, one of REFERENCES."""
    arm: str = GRID
    """Where the recipe sits in the design: the grid, or the one-at-a-time arm it varies (ARMS)."""

    def __post_init__(self) -> None:
        self.dpo_config(n_evals=1, seed=0)  # validates optimizer, lr, β, weight decay, batch size and epochs
        require(self.train_size is None or (is_int(self.train_size) and self.train_size >= 1), self, "train_size",
                "None or an integer ≥ 1")  # fmt: skip
        require(self.reference in REFERENCES, self, "reference", f"one of {REFERENCES}")
        require(self.arm in (GRID, *ARMS), self, "arm", f"one of {(GRID, *ARMS)}")

    def dpo_config(self, n_evals: int, seed: int) -> DPOConfig:
        """The DPOConfig of this recipe's run with `seed` (no gradient clipping, as in Park §3.3's DPO)."""
        return DPOConfig(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs,
                         batch_size=self.batch_size, grad_clip=None, n_evals=n_evals, seed=seed, beta=self.beta)  # fmt: skip

    @property
    def schedule(self) -> tuple:
        """What recipes trained as one batched ensemble share (they may differ in lr, β and weight decay)."""
        return (self.optimizer, self.batch_size, self.epochs, self.train_size, self.reference)

    @property
    def knobs(self) -> tuple:
        """The recipe without its arm label: two recipes with the same knobs are the same cell."""
        return dataclasses.astuple(dataclasses.replace(self, arm=GRID))

    @property
    def label(self) -> str:
        """A short name: 'rmsprop lr=5e-05 β=0.1 b16 3ep' and any knob off its default."""
        text = f"{self.optimizer} lr={self.lr:g} β={self.beta:g} b{self.batch_size} {self.epochs}ep"
        if self.weight_decay:
            text += f" wd={self.weight_decay:g}"
        if self.train_size is not None:
            text += f" n={self.train_size}"
        if self.reference != "kl_sweep":
            text += f" ref={self.reference}"
        return text

    @classmethod
    def from_row(cls, row, n_train: int) -> Recipe:
        """The recipe of a row of ``analysis.cell_table`` (whose train_size is the number of pairs
        used: n_train, all of them, gives None), placed in the grid."""
        size = int(row["train_size"])
        return cls(str(row["optimizer"]), float(row["lr"]), float(row["beta"]), int(row["batch_size"]), int(row["epochs"]),
                   float(row["weight_decay"]), None if size == n_train else size, str(row["reference"]))  # fmt: skip


def grid(
    optimizers: list[str], adaptive_lrs: list[float], sgd_lrs: list[float], betas: list[float], batch_size: int, epochs: int
) -> list[Recipe]:
    """The full grid: every optimizer × its learning rates × every β, at one batch size and
    horizon, from the KL-sweep reference on every training pair. SGD takes sgd_lrs; the
    adaptive optimizers (Adam, AdamW, RMSprop) take adaptive_lrs."""
    return [
        Recipe(optimizer, lr, beta, batch_size, epochs)
        for optimizer in optimizers
        for lr in (sgd_lrs if optimizer == "sgd" else adaptive_lrs)
        for beta in betas
    ]


def one_at_a_time(
    base: Recipe,
    batch_sizes: list[int],
    weight_decays: list[float],
    long_epochs: int,
    train_sizes: list[int],
    references: list[str],
) -> list[Recipe]:
    """The base recipe with one knob changed at a time (each value that differs from the base's).
    The horizon arm is one longer run whose intermediate evaluations give the shorter horizons."""
    arms = [
        *(("batch size", {"batch_size": b}) for b in batch_sizes),
        *(("weight decay", {"weight_decay": w}) for w in weight_decays),
        ("horizon", {"epochs": long_epochs}),
        *(("training set", {"train_size": n}) for n in train_sizes),
        *(("reference", {"reference": r}) for r in references),
    ]
    base = dataclasses.replace(base, arm=GRID)
    recipes = [dataclasses.replace(base, arm=arm, **change) for arm, change in arms]
    return [r for r in recipes if r.knobs != base.knobs]


# ---- the notebook's parameters (notebooks/drift_map.md) ---------------------------------

PARAMETERS = {
    "seeds": p.SEEDS,
    **sets.NUMBER_LINE,
    "sft_epochs": p.EPOCHS,
    "sft_lr": p.LEARNING_RATE,
    "grokking_sft_epochs": p.EPOCHS,
    "optimizers": v.choices(*OPTIMIZERS),
    "adaptive_lrs": v.reals(0, 1, open_low=True),
    "sgd_lrs": v.reals(0, 1, open_low=True),
    "betas": p.BETAS,
    "batch_size": p.BATCH_SIZE,
    "dpo_epochs": p.EPOCHS,
    "evals_per_epoch": p.EVALS_PER_EPOCH,
    "arm_batch_sizes": v.integers(1),
    "arm_weight_decays": v.reals(0),
    "long_epochs": p.EPOCHS,
    "arm_train_sizes": v.integers(1),
    "kl_samples": p.KL_SAMPLES,
    "margin_pairs": p.MARGIN_PAIRS,
    "scored_train_pairs": v.integer(1, 2560),  # default: 256
    "confirmation_seeds": p.SEEDS,
    "update_tasks": v.choices(*TASK_DATA),
    "grokking_optimizers": v.choices(*ADAPTIVE),
    "kl_optimizers": v.choices(*ADAPTIVE),
    "update_lrs": v.reals(0, 1, open_low=True),
    "update_betas": p.BETAS,
    "grokking_read_epochs": v.integers(1),
    "kl_read_epochs": v.integers(1),
    "update_seeds": p.SEEDS,
    "results_root": p.RESULTS_ROOT,
    "device": p.DEVICE,
}


def check_parameters(values) -> None:
    """Check the drift-map notebook's parameters (PARAMETERS) and the rules between them."""
    p.check(PARAMETERS, values)
    train, _ = make_pairs(sets.number_line_config(values))
    if set(values["confirmation_seeds"]) & set(values["seeds"]):
        p.fail("confirmation_seeds", f"seeds that the map does not use (seeds = {values['seeds']})", values["confirmation_seeds"])
    if values["long_epochs"] <= values["dpo_epochs"]:
        p.fail("long_epochs", f"an integer > dpo_epochs = {values['dpo_epochs']} (the horizon arm runs longer)",
               values["long_epochs"])  # fmt: skip
    for name in ("grokking_read_epochs", "kl_read_epochs"):
        if list(values[name]) != sorted(values[name]):
            p.fail(name, "increasing epochs (the horizons read along one long run)", values[name])
    too_big = [n for n in values["arm_train_sizes"] if n >= len(train)]
    if too_big:
        p.fail("arm_train_sizes", f"sizes < {len(train)}, the training pairs of this data set", values["arm_train_sizes"])
    smallest = min([*values["arm_train_sizes"], len(train)])
    for name in ("batch_size", "arm_batch_sizes"):
        sizes = np.atleast_1d(values[name])
        if (sizes > smallest).any():
            p.fail(name, f"batch sizes ≤ {smallest}, the smallest training set of the map", values[name])
    steps_per_epoch = p.steps(smallest, int(np.max([values["batch_size"], *values["arm_batch_sizes"]])))
    if values["evals_per_epoch"] > steps_per_epoch:
        p.fail("evals_per_epoch", f"≤ {steps_per_epoch}, the fewest optimizer steps per epoch of the map's runs",
               values["evals_per_epoch"])  # fmt: skip
