"""Seaborn figures shared by chapters. Each returns the matplotlib Figure it draws."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm


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


def plot_kl_heatmap(sweep: pd.DataFrame, optimal: pd.DataFrame) -> plt.Figure:
    """Seed-mean KL over (β, step) as a heat map (log colour scale), with each seed's
    least-OOD checkpoint marked (Park Fig. 2 left)."""
    mean = sweep[sweep["step"] > 0].groupby(["beta", "step"])["kl"].mean().unstack("step")  # (β, step)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    positive = mean.to_numpy()[mean.to_numpy() > 0]
    sns.heatmap(
        mean,
        ax=ax,
        cmap="magma",
        norm=LogNorm(vmin=positive.min(), vmax=positive.max()),
        cbar_kws={"label": "KL(π_θ ‖ π_ref)"},
        xticklabels=5,
        yticklabels=[f"{b:.3g}" for b in mean.index],
    )
    rows = {b: i for i, b in enumerate(mean.index)}
    cols = {s: j for j, s in enumerate(mean.columns)}
    for seed, g in optimal.groupby("seed"):
        ax.scatter(
            [cols[s] + 0.5 for s in g["step"]],
            [rows[b] + 0.5 for b in g["beta"]],
            marker="o",
            s=28,
            facecolors="none",
            edgecolors="white",
            linewidths=1.2,
            label="least-OOD checkpoint" if seed == optimal["seed"].min() else None,
        )
    ax.invert_yaxis()
    ax.set(xlabel="DPO step", ylabel="β", title="KL over the (β, step) sweep; circles: least-OOD checkpoint of each β and seed")
    ax.legend(loc="upper left", frameon=True)
    fig.tight_layout()
    return fig


def plot_ood_vs_kl(sweep: pd.DataFrame, band: tuple[float, float], bins: pd.DataFrame) -> plt.Figure:
    """OOD rate against KL for every checkpoint (colour: β), the binned means that
    ``sweep.u_shape_bins`` computed, and the band of least-OOD KLs (Park Fig. 2 right)."""
    data = sweep[(sweep["step"] > 0) & (sweep["kl"] > 0)].assign(log10_beta=lambda d: np.log10(d["beta"]))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.axvspan(*band, color="tab:pink", alpha=0.25, label=f"least-OOD band, KL {band[0]:.2f}–{band[1]:.2f}")
    sns.scatterplot(data=data, x="kl", y="ood_rate", hue="log10_beta", palette="viridis", s=14, alpha=0.6, linewidth=0, ax=ax)
    ax.plot(bins["kl"], bins["ood_rate"], color="black", marker="s", label=f"mean OOD in {len(bins)} equal-count KL bins")
    ax.set(xscale="log", xlabel="KL(π_θ ‖ π_ref)", ylabel="OOD rate", title="OOD against KL, every checkpoint")
    ax.legend(fontsize=8, loc="upper left", title="log10 β", title_fontsize=8)
    fig.tight_layout()
    return fig


def plot_kl_band(optimal: pd.DataFrame, band: tuple[float, float], paper_band: tuple[float, float]) -> plt.Figure:
    """KL of the least-OOD checkpoint against β, one colour per seed, with our band and the paper's."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.axhspan(*paper_band, color="tab:gray", alpha=0.2, label=f"paper: {paper_band[0]}–{paper_band[1]}")
    ax.axhspan(*band, color="tab:pink", alpha=0.3, label=f"ours (10–90 %): {band[0]:.2f}–{band[1]:.2f}")
    sns.lineplot(data=optimal, x="beta", y="kl", hue="seed", marker="o", palette="deep", ax=ax)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="β",
        ylabel="KL at the least-OOD checkpoint",
        title="Where each β is least out of distribution",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
