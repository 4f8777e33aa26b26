"""The book's figures are legible at its column width: size, panels per row, text size, SFT apart from DPO."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from dpo_toolkit import plotting


def test_a_tick_label_stays_legible_at_the_largest_shrink_the_book_allows():
    for key in ("xtick.labelsize", "ytick.labelsize"):
        on_screen_px = plotting.STYLE[key] * plotting.DPI / 72 / plotting.MAX_SHRINK
        assert on_screen_px >= plotting.MIN_TICK_PX, key
    assert plotting.MAX_WIDTH_IN * plotting.DPI <= plotting.MAX_SHRINK * plotting.COLUMN_PX


def test_layout_check_counts_panels_per_row_not_colorbars_or_twins():
    fig, axes = plt.subplots(2, 2, figsize=(11, 6))
    fig.colorbar(axes[0, 0].imshow(np.eye(3)), ax=axes[0, 0])
    axes[1, 1].twinx()
    assert plotting.check_layout(fig) is fig
    three, _ = plt.subplots(1, 3, figsize=(11, 3))
    with pytest.raises(ValueError, match="3 panels in one row"):
        plotting.check_layout(three)
    wide, _ = plt.subplots(figsize=(13, 3))
    with pytest.raises(ValueError, match=r"13\.0 in wide"):
        plotting.check_layout(wide)
    plt.close("all")


def _runs() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        rows += [{"phase": "sft", "beta": np.nan, "seed": seed, "epoch": e, "ood_rate": 0.5 / (e + 1), "margin": np.nan}
                 for e in range(0, 101, 10)]  # fmt: skip
        rows += [{"phase": "dpo", "beta": b, "seed": seed, "epoch": e, "ood_rate": 0.1 + b * e, "margin": b * e}
                 for b in (0.1, 1.0) for e in range(4)]  # fmt: skip
    return pd.DataFrame(rows)


def test_sft_and_dpo_get_their_own_epoch_axes_in_the_books_type_size():
    fig = plotting.plot_training_curves(_runs(), {"ood_rate": "OOD rate", "margin": "DPO reward margin"})
    sft_ood, dpo_ood, dpo_margin = fig.axes  # the margin, DPO's alone, has no placeholder panel beside it
    assert sft_ood.get_xlabel() == "SFT epoch" and dpo_ood.get_xlabel() == "DPO epoch"
    assert max(x for line in sft_ood.get_lines() for x in line.get_xdata()) == 100
    assert max(x for line in dpo_ood.get_lines() for x in line.get_xdata()) == 3  # not a sliver beside SFT's 100
    assert sft_ood.get_ylabel() == dpo_ood.get_ylabel() == "OOD rate"  # words, not the column name; on every panel
    assert dpo_margin.get_title() == "DPO reward margin: DPO only (no SFT value)"
    fig.canvas.draw()
    assert dpo_margin.get_ylabel() == "DPO reward margin"  # the DPO panel carries the margin's axis and its numbers
    assert any(t.get_text() and t.get_visible() for t in dpo_margin.get_yticklabels())
    fig.canvas.draw()  # outside the style's context: the ticks keep the book's size
    sizes = {t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()}
    assert sizes == {plotting.STYLE["xtick.labelsize"]}
    assert fig.dpi == plotting.DPI
    plt.close("all")


def test_the_style_is_undone_but_what_the_plot_turned_on_stays(monkeypatch):
    """In Jupyter the first figure switches matplotlib to interactive mode, which is what shows every
    later figure; restoring all of rcParams afterwards (plt.rc_context) would switch it off again."""
    monkeypatch.setitem(matplotlib.rcParams, "interactive", False)
    size = matplotlib.rcParams["xtick.labelsize"]

    @plotting.book_figure
    def first_figure():
        matplotlib.interactive(True)  # as the inline backend does when it is first used
        return plt.subplots()[0]

    first_figure()
    assert matplotlib.is_interactive()
    assert matplotlib.rcParams["xtick.labelsize"] == size
    plt.close("all")
