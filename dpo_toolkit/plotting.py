"""Seaborn figures shared by chapters. Each returns the matplotlib Figure it draws."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def _run_label(runs: pd.DataFrame) -> pd.Series:
    return runs["beta"].map(lambda b: "SFT" if pd.isna(b) else f"DPO β={b:g}")


def plot_training_curves(runs: pd.DataFrame, metrics: dict[str, str], ncols: int = 2) -> plt.Figure:
    """Metric against epoch, one line per run (SFT, DPO at each β), mean ± sd over seeds.

    runs: the tidy output of ``run_sft_then_dpo``; metrics: column → axis title.
    A metric that a run does not have (SFT has no margin) is simply not drawn for it.
    """
    data = runs.assign(run=_run_label(runs))
    order = list(dict.fromkeys(data.sort_values("beta", na_position="first")["run"]))
    dpo_runs = [r for r in order if r != "SFT"]
    palette = {"SFT": "black", **dict(zip(dpo_runs, sns.color_palette("viridis", len(dpo_runs)), strict=True))}
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (column, title) in zip(axes.flat, metrics.items(), strict=False):
        sns.lineplot(
            data=data.dropna(subset=[column]),
            x="epoch",
            y=column,
            hue="run",
            hue_order=order,
            palette=palette,
            errorbar="sd",
            ax=ax,
            legend=ax is axes.flat[0],
        )
        ax.set(title=title, xlabel="epoch", ylabel=column)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.remove()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[0].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(order), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
