"""The drift map's update-count axis: reading a long run at shorter horizons equals the shorter
runs, the cells per horizon and their corner, the simultaneous interval of the largest cell, and
the verdicts of C22-full and C25 on hand-made runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dpo_toolkit.core.claims import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED, UNTESTABLE
from dpo_toolkit.core.config import ConfigError, DataConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.studies.drift_map.claims import update_claims
from dpo_toolkit.studies.drift_map.design import UPDATES, Recipe
from dpo_toolkit.studies.drift_map.runs import MapSetup, run_recipes
from dpo_toolkit.studies.drift_map.updates import (
    TASK_DATA,
    UpdateAxis,
    corner,
    drifting_cell,
    largest,
    read_along,
    task_data,
    update_cells,
    update_curves,
    when_it_drifts,
)

SHORT_DATA = DataConfig(prompt_min=1, prompt_max=9, window=1, test_fraction=0.4, seed=0)
SHORT = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=8)


def _setup() -> MapSetup:
    sft = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=3, batch_size=4, grad_clip=None, n_evals=1)
    return MapSetup(SHORT_DATA, SHORT, EvalConfig(kl_samples=2), sft, dataclasses.replace(sft, optimizer="adamw"),
                    evals_per_epoch=1, scored_train_pairs=8)  # fmt: skip


def test_a_long_run_read_at_an_earlier_epoch_is_the_shorter_run(tmp_path):
    """The update axis reads every horizon off one long run: its checkpoint at epoch k must be the
    k-epoch run of the same seed and schedule (same data order, constant learning rate)."""
    setup = _setup()
    long_run = run_recipes([Recipe("adamw", 3e-3, 0.1, 4, 3)], [0], setup, tmp_path / "long")
    for epochs in (1, 2):
        short = run_recipes([Recipe("adamw", 3e-3, 0.1, 4, epochs)], [0], setup, tmp_path / f"short{epochs}")
        at = long_run[long_run["epoch"] <= epochs + 1e-9].reset_index(drop=True)
        columns = ["step", "loss", "ood_rate", "ood_mass", "chosen_logp", "rejected_logp", "accuracy"]
        pd.testing.assert_frame_equal(at[columns], short[columns], rtol=1e-5, atol=1e-7)
    assert long_run["chosen_logp"].iloc[-1] != long_run["chosen_logp"].iloc[1]  # the run did move
    # evaluating every 3 epochs instead of every epoch leaves the training alone: the same end
    sparse = run_recipes([Recipe("adamw", 3e-3, 0.1, 4, 3)], [0], dataclasses.replace(setup, epochs_per_eval=3), tmp_path / "s")
    assert sparse["epoch"].tolist() == [0.0, 3.0]
    assert sparse["chosen_logp"].iloc[-1] == pytest.approx(long_run["chosen_logp"].iloc[-1], rel=1e-5)


def test_the_axis_validates_itself_and_its_recipes_carry_the_task_reference():
    axis = UpdateAxis("grokking", ("adamw", "rmsprop"), (5e-6, 5e-5), (0.01, 0.1), (3, 10, 30))
    recipes = axis.recipes()
    assert len(recipes) == 2 * 2 * 2 and {r.epochs for r in recipes} == {30}
    assert {r.reference for r in recipes} == {"grokking"} and {r.arm for r in recipes} == {UPDATES}
    assert {r.reference for r in UpdateAxis("kl_sweep", ("adam",), (5e-5,), (0.1,), (3,)).recipes()} == {"kl_sweep"}
    for bad, field in [({"task": "chess"}, "task"), ({"optimizers": ("sgd",)}, "optimizers"),
                       ({"read_epochs": (10, 3)}, "read_epochs"), ({"read_epochs": (0, 3)}, "read_epochs"),
                       ({"lrs": (0.0,)}, "lr"), ({"eval_every": 2}, "eval_every")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            dataclasses.replace(axis, **bad)
    assert task_data("kl_sweep", 3).prompt_max == 500 and task_data("grokking", 0).window == 5
    assert set(TASK_DATA) == {"grokking", "kl_sweep"}


RISES = Recipe("adamw", 5e-6, 0.01, epochs=30, reference="grokking", arm=UPDATES)
FLAT = Recipe("adamw", 5e-5, 0.01, epochs=30, reference="grokking", arm=UPDATES)
BIG = Recipe("adamw", 5e-3, 0.01, epochs=30, reference="grokking", arm=UPDATES)


def _curves(ood_at: dict[Recipe, list[list[float]]], accuracy: float = 0.8, loss: float = 0.5) -> pd.DataFrame:
    """Hand-made curves at epochs 0, 1, 3, 10, 30, one per seed: the reference at 10 % OOD, then the
    given OOD rates at epochs 1, 3, 10 and 30 (one list per seed)."""
    rows = []
    for recipe, seeds in ood_at.items():
        for seed, values in enumerate(seeds):
            for epoch, value in zip([0, 1, 3, 10, 30], [0.1, *values], strict=True):
                rows.append({**dataclasses.asdict(recipe), "train_size": 100, "label": recipe.label, "seed": seed,
                             "step": epoch * 10, "epoch": float(epoch), "loss": loss if epoch else np.log(2),
                             "ood_rate": value, "ood_mass": value / 2, "chosen_logp": -1.0, "rejected_logp": -2.0 - epoch,
                             "accuracy": accuracy if epoch else 0.5, "margin": float(epoch), "kl": 0.1 * epoch,
                             "ordering": 0.0, "task": "grokking"})  # fmt: skip
    return pd.DataFrame(rows)


def _read(curves: pd.DataFrame) -> pd.DataFrame:
    return read_along(curves, (3, 10, 30), steps_per_epoch=10).assign(task="grokking")


def test_reading_along_gives_each_horizon_its_updates_and_change():
    curves = _curves({RISES: [[0.1, 0.1, 0.3, 0.6]] * 3, FLAT: [[0.1, 0.1, 0.1, 0.1]] * 3})
    read = _read(curves)
    assert sorted(read["updates"].unique()) == [30, 100, 300]
    rises = read[read["label"] == RISES.label].groupby("read_epoch")["ood_change"].mean()
    assert rises.round(6).to_dict() == {3: 0.0, 10: 0.2, 30: 0.5}
    cells = update_cells(read).set_index(["label", "read_epoch"])
    assert cells.loc[(RISES.label, 30), "drift_fraction"] == 1.0 and cells.loc[(RISES.label, 10), "drift_fraction"] == 0.0
    assert cells.loc[(RISES.label, 30), "accuracy_mean"] == pytest.approx(0.8) and not cells["collapse_regime"].any()
    # the corner: lr ≤ 5e-5 read at ≥ 30 epochs, outside a collapse regime
    assert sorted(corner(update_cells(read))["label"]) == sorted([RISES.label, FLAT.label])
    bands = update_curves(curves)
    last = bands[(bands["label"] == RISES.label) & (bands["epoch"] == 30)].iloc[0]
    assert last["ood_change_mean"] == pytest.approx(0.5) and last["mass_change_mean"] == pytest.approx(0.25)
    text = when_it_drifts(update_cells(read))
    assert text.startswith("**On the grokking task**, the OOD rate rises")
    assert "rises ≥ 10 points, clear of zero, at adamw lr 5e-06 β 0.01 from 10 epochs (100 updates, +20 points)" in text
    assert "most seeds pass the ≥ 50 % drift rule at adamw lr 5e-06 β 0.01 from 30 epochs" in text


def test_the_largest_cell_gets_a_bonferroni_interval_from_its_closed_form():
    a = [0.3, 0.5, 0.4, 0.6]  # RISES at 30 epochs: OOD change = value − 0.1
    curves = _curves({RISES: [[0.1, 0.1, 0.2, v + 0.1] for v in a], FLAT: [[0.1, 0.1, 0.1, 0.1]] * 4})
    read = _read(curves)
    cells = corner(update_cells(read))  # two cells: RISES and FLAT at 30 epochs
    interval, where = largest(read, cells, "ood_change")
    level = 1 - 0.05 / 2
    half = stats.t.ppf(0.5 + level / 2, 3) * np.std(a, ddof=1) / 2
    assert interval.estimate == pytest.approx(np.mean(a)) and where == f"{RISES.label} at 30 epochs"
    assert interval.low == pytest.approx(np.mean(a) - half) and interval.high == pytest.approx(np.mean(a) + half)


def _c25(curves: pd.DataFrame) -> pd.Series:
    read = _read(curves)
    return update_claims(read, update_cells(read)).set_index("claim_id").loc["C25"]


def test_c25_reproduced_when_a_corner_cell_drifts_partly_when_it_only_rises():
    drift = _c25(_curves({RISES: [[0.1, 0.2, 0.5, v] for v in (0.8, 0.85, 0.9, 0.8, 0.85)]}))
    assert drift["verdict"] == REPRODUCED and "largest rise +74 points" in drift["our_value"]
    graded = _c25(_curves({RISES: [[0.1, 0.2, 0.3, v] for v in (0.35, 0.4, 0.38, 0.36, 0.4)]}))
    assert graded["verdict"] == PARTLY  # +28 points, clear of 10; but 38 % is clear below 50 %
    flat = _c25(_curves({RISES: [[0.1, 0.1, 0.1, v] for v in (0.1, 0.12, 0.08, 0.1, 0.1)]}))
    assert flat["verdict"] == NOT_REPRODUCED
    few = _c25(_curves({RISES: [[0.1, 0.2, 0.5, 0.8]] * 2}))
    assert few["verdict"] == INCONCLUSIVE  # two seeds decide nothing


def test_c25_is_untestable_when_the_corner_only_collapses_and_a_big_step_is_no_corner():
    collapsed = _curves({RISES: [[0.9, 0.9, 0.9, 0.9]] * 4})  # ≥ 50 % OOD at the first checkpoint: a jump
    c25 = _c25(collapsed)
    assert c25["verdict"] == UNTESTABLE and "no small-step, many-update cell" in c25["our_value"]
    big = _c25(_curves({BIG: [[0.1, 0.2, 0.5, 0.8]] * 4}))
    assert big["verdict"] == UNTESTABLE  # lr 5e-3 is outside the corner, however it drifts


def test_c22_full_reads_the_paper_recipe_at_three_epochs_on_the_kl_task():
    paper = Recipe("rmsprop", 5e-5, 0.01, epochs=30, reference="kl_sweep", arm=UPDATES)
    curves = _curves({paper: [[0.6, 0.7, 0.8, 0.9]] * 5}).assign(task="kl_sweep")
    read = read_along(curves, (3, 30), steps_per_epoch=10).assign(task="kl_sweep")
    claims = update_claims(read, update_cells(read)).set_index("claim_id")
    assert list(claims.index) == ["C22-full", "C25-kl"]
    # read at 3 epochs (0.7 OOD from 0.1) each of the 5 seeds would drift, but its first checkpoint jumped to 60 %:
    # a jump is a collapse, never a drift; 0 of 5 (Wilson [0, 0.43]) straddles the partial 20 %
    assert claims.loc["C22-full", "verdict"] == INCONCLUSIVE and "5 collapsed" in claims.loc["C22-full", "our_value"]
    gradual = _curves({paper: [[0.2, 0.7, 0.8, 0.9]] * 5}).assign(task="kl_sweep")
    read = read_along(gradual, (3, 30), steps_per_epoch=10).assign(task="kl_sweep")
    c22 = update_claims(read, update_cells(read)).set_index("claim_id").loc["C22-full"]
    assert c22["verdict"] == REPRODUCED and "5 of 5 runs drift (β=0.01: 5/5)" in c22["our_value"]


def test_the_update_figure_draws_a_line_per_cell_and_a_cross_per_collapsed_horizon():
    import matplotlib.pyplot as plt

    from dpo_toolkit.plotting import plot_update_axis

    curves = _curves({RISES: [[0.1, 0.1, 0.3, 0.6]] * 3, BIG: [[0.9, 0.9, 0.9, 0.9]] * 3})
    cells = update_cells(_read(curves))
    fig = plot_update_axis(update_curves(curves), cells)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("lr")]
    assert sorted(line.get_label() for line in lines) == ["lr 0.005, β 0.01", "lr 5e-06, β 0.01"]
    rises = next(line for line in lines if line.get_label() == "lr 5e-06, β 0.01")
    assert list(rises.get_xdata()) == [10, 30, 100, 300] and list(rises.get_ydata()) == pytest.approx([0, 0, 20, 50])
    crosses = ax.collections[-1].get_offsets()
    assert len(crosses) == 3 and set(np.round(crosses[:, 1], 6)) == {80.0}  # BIG collapsed (a jump) at every horizon
    plt.close(fig)


def test_the_drifting_cell_is_the_first_horizon_clear_of_fifty_percent_that_learned_and_did_not_collapse():
    fast = Recipe("rmsprop", 5e-4, 0.1, epochs=30, reference="kl_sweep", arm=UPDATES)
    slow = Recipe("rmsprop", 5e-5, 0.1, epochs=30, reference="kl_sweep", arm=UPDATES)
    # fast: 60–64 % at 10 epochs (clear of 50 % over 5 seeds), slow: only by 30 epochs
    curves = _curves({fast: [[0.1, 0.3, 0.6 + 0.01 * s, 0.8] for s in range(5)],
                      slow: [[0.1, 0.1, 0.3, 0.7 + 0.01 * s] for s in range(5)]}).assign(task="kl_sweep")  # fmt: skip
    read = read_along(curves, (3, 10, 30), steps_per_epoch=252).assign(task="kl_sweep")
    cells = update_cells(read)
    best = drifting_cell(read, cells)
    assert (best["label"], best["read_epoch"], best["updates"]) == (fast.label, 10, 2520)
    assert best["ood_low"] > 0.5 and best["ood_high"] < 0.7
    # a cell that did not learn the preferences (accuracy 0.65 < 0.7) is no drifting recipe, however far it drifts
    unlearned = _curves({fast: [[0.1, 0.3, 0.6 + 0.01 * s, 0.8] for s in range(5)]}, accuracy=0.65).assign(task="kl_sweep")
    read = read_along(unlearned, (3, 10, 30), steps_per_epoch=252).assign(task="kl_sweep")
    assert drifting_cell(read, update_cells(read)) is None
    # nor is a cell whose interval straddles 50 % (45–75 % over the seeds), nor one on another task
    straddles = _curves({fast: [[0.1, 0.3, 0.4, v] for v in (0.45, 0.75, 0.5, 0.7, 0.46)]}).assign(task="kl_sweep")
    read = read_along(straddles, (3, 10, 30), steps_per_epoch=252).assign(task="kl_sweep")
    assert drifting_cell(read, update_cells(read)) is None
    assert drifting_cell(read.assign(task="grokking"), update_cells(read.assign(task="grokking"))) is None


def test_collapsed_seeds_enter_no_drift_estimate():
    """A cell where two of five seeds collapse (a jump to 90 % OOD at the first checkpoint) is no collapse
    regime, but its drift estimates read the other three seeds alone: a collapse is not drift."""
    sound = [[0.1, 0.15, 0.2, v] for v in (0.3, 0.4, 0.5)]  # rises of 0.2, 0.3 and 0.4 by 30 epochs
    curves = _curves({RISES: [*sound, [0.9, 0.9, 0.9, 0.95], [0.9, 0.9, 0.95, 0.95]]})
    read = _read(curves)
    cells = corner(update_cells(read))
    assert list(cells["label"]) == [RISES.label] and cells["collapsed"].iloc[0] == 2
    interval, _ = largest(read, cells, "ood_change")
    assert interval.n == 3 and interval.estimate == pytest.approx(0.3)  # with the collapses it would be 0.53
