"""Seaborn figures shared by chapters. Each returns the matplotlib Figure it draws.

Every figure is drawn in the book's style (STYLE) and checked for legibility at the book's
column width: at most MAX_WIDTH_IN inches wide at 100 dpi, so the book shrinks it by at most
1.6 into its ~770 px column (the site check measures that ratio), and at most two panels per
row. Text is sized so that a tick label shrunk by 1.6 is still ≥ 10 px on screen.
"""

from __future__ import annotations

import functools
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm

DPI = 100
MAX_SHRINK = 1.6  # natural width / rendered width the site check allows
MIN_TICK_PX = 10  # a tick label's height on screen at that shrink
COLUMN_PX = 756  # the text column at a 1,400 px window, as the site check measured it
MAX_WIDTH_IN = 12.0  # 1,200 px ≤ MAX_SHRINK × COLUMN_PX
MAX_PANELS_PER_ROW = 2
STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 12,
    "axes.titlesize": 12.5,
    "axes.labelsize": 12,
    "xtick.labelsize": 12,  # 12 pt = 16.7 px at 100 dpi, 10.4 px shrunk by 1.6
    "ytick.labelsize": 12,
    "legend.fontsize": 11,
    "legend.title_fontsize": 11,
    "figure.titlesize": 13,
}


def check_layout(fig: plt.Figure) -> plt.Figure:
    """Raise ValueError when `fig` is wider than MAX_WIDTH_IN or has more than MAX_PANELS_PER_ROW
    panels in a row (colorbars and twin axes are not panels); return it otherwise."""
    if fig.get_figwidth() > MAX_WIDTH_IN + 1e-9:
        raise ValueError(f"figure {fig.get_figwidth():.1f} in wide: at most {MAX_WIDTH_IN:g} in, or the book shrinks its text")
    positions = {
        (round(ax.get_position().x0, 3), round(ax.get_position().y0, 3))  # a twin axis shares its host's position
        for ax in fig.axes
        if ax.get_visible() and ax.get_label() != "<colorbar>"
    }
    per_row = Counter(y0 for _, y0 in positions)
    if per_row and max(per_row.values()) > MAX_PANELS_PER_ROW:
        raise ValueError(f"{max(per_row.values())} panels in one row: at most {MAX_PANELS_PER_ROW} at the book's column width")
    return fig


def book_figure(plot):
    """Draw `plot`'s figure in STYLE (its ticks created and laid out inside the style) and check its layout."""

    @functools.wraps(plot)
    def draw(*args, **kwargs) -> plt.Figure:
        saved = {key: plt.rcParams[key] for key in STYLE}  # only these: not plt.rc_context, which would also undo
        plt.rcParams.update(STYLE)  # what a first figure sets in Jupyter (interactive mode, which shows the figures)
        try:
            fig = plot(*args, **kwargs)
            fig.canvas.draw()  # ticks are made lazily: make them now, in the book's sizes
        finally:
            plt.rcParams.update(saved)
        return check_layout(fig)

    return draw


def _run_label(runs: pd.DataFrame) -> pd.Series:
    return runs["beta"].map(lambda b: "SFT" if pd.isna(b) else f"DPO β={b:g}")


@book_figure
def plot_training_curves(runs: pd.DataFrame, metrics: dict[str, str], ncols: int = 2) -> plt.Figure:
    """Metric against epoch, one line per run (SFT, DPO at each β), mean ± sd over seeds.

    runs: the tidy output of ``run_sft_then_dpo``; metrics: column → axis label. When runs
    hold both phases, SFT and DPO get axes of their own (their epochs differ in number and in
    what they count): each metric is a row of two panels, SFT against its epochs on the left
    and DPO at each β against DPO epochs on the right, sharing the metric's scale; a metric
    SFT does not have (the DPO margin) leaves its left panel empty. Otherwise the metrics are
    laid out `ncols` per row.
    """
    data = runs.assign(run=_run_label(runs))
    order = list(dict.fromkeys(data.sort_values("beta", na_position="first")["run"]))
    dpo_runs = [r for r in order if r != "SFT"]
    palette = {"SFT": "black", **dict(zip(dpo_runs, sns.color_palette("viridis", len(dpo_runs)), strict=True))}
    split = "SFT" in order and bool(dpo_runs)
    fig, panels = _curve_panels(metrics, split, ncols)
    for sft_ax, dpo_ax, column, label in panels:
        has = data.dropna(subset=[column])
        sns.lineplot(data=has[has["run"] != "SFT"] if split else has, x="epoch", y=column, hue="run",
                     hue_order=dpo_runs if split else order, palette=palette, errorbar="sd", ax=dpo_ax)  # fmt: skip
        dpo_ax.set(xlabel="DPO epoch" if split or "SFT" not in order else "epoch", ylabel=label)
        if sft_ax is None:
            continue
        sft = has[has["run"] == "SFT"]
        if len(sft):
            sns.lineplot(data=sft, x="epoch", y=column, color="black", errorbar="sd", ax=sft_ax)
            sft_ax.set(xlabel="SFT epoch", ylabel=label)
        else:  # a metric of DPO only: its DPO panel alone, with its own axis
            sft_ax.remove()
            dpo_ax.set_title(f"{label}: DPO only (no SFT value)")
            dpo_ax.tick_params(labelleft=True)
    _shared_legend(fig, [ax for _, ax, _, _ in panels])
    return fig


def _curve_panels(metrics: dict[str, str], split: bool, ncols: int) -> tuple[plt.Figure, list[tuple]]:
    """The figure of ``plot_training_curves`` and its panels (SFT axes or None, DPO axes, column,
    label): a row of two per metric when SFT and DPO are split, else `ncols` metrics per row."""
    if split:
        fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.3 * len(metrics)), squeeze=False, sharey="row")
        axes[0, 0].set_title("SFT (the reference)")
        axes[0, 1].set_title("DPO from the reference")
        return fig, [(row[0], row[1], column, label) for row, (column, label) in zip(axes, metrics.items(), strict=True)]
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.remove()
    return fig, [(None, ax, column, label) for ax, (column, label) in zip(axes.flat, metrics.items(), strict=False)]


def _shared_legend(fig: plt.Figure, axes: list) -> None:
    """One legend below the figure, from the first axes' lines, in rows of five; the axes' own removed."""
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    legend_rows = -(-len(labels) // 5)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.tight_layout(rect=(0, 0.35 * legend_rows / fig.get_figheight(), 1, 1))


@book_figure
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


@book_figure
def plot_ood_vs_kl(sweep: pd.DataFrame, band: tuple[float, float], bins: pd.DataFrame) -> plt.Figure:
    """OOD rate against KL for every checkpoint (colour: β), the binned means that
    ``kl_sweep.u_shape_bins`` computed, and the band of least-OOD KLs (Park Fig. 2 right)."""
    data = sweep[(sweep["step"] > 0) & (sweep["kl"] > 0)].assign(log10_beta=lambda d: np.log10(d["beta"]))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.axvspan(*band, color="tab:pink", alpha=0.25, label=f"least-OOD band, KL {band[0]:.2f}–{band[1]:.2f}")
    sns.scatterplot(data=data, x="kl", y="ood_rate", hue="log10_beta", palette="viridis", s=14, alpha=0.6, linewidth=0, ax=ax)
    ax.plot(bins["kl"], bins["ood_rate"], color="black", marker="s", label=f"mean OOD in {len(bins)} equal-count KL bins")
    ax.set(xscale="log", xlabel="KL(π_θ ‖ π_ref)", ylabel="OOD rate", title="OOD against KL, every checkpoint")
    ax.legend(loc="upper left", title="log10 β")
    fig.tight_layout()
    return fig


@book_figure
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
    ax.legend()
    fig.tight_layout()
    return fig


SURGERY_LABELS = {"A": "A (β small)", "attention": "A with B's attention", "non-attention": "A with B's non-attention"}


@book_figure
def plot_attention_maps(patterns: dict[str, np.ndarray], labels: dict[str, list[str]]) -> plt.Figure:
    """Attention pattern of every head (Park Fig. 3 left): one row per model.

    patterns: model name → (n_heads, seq, seq) weights on that model's own sequence;
    labels: model name → the tokens of that sequence, for the axes.
    """
    n_heads = next(iter(patterns.values())).shape[0]
    rows_per_model = -(-n_heads // 2)  # two heads per row
    nrows = rows_per_model * len(patterns)
    fig, axes = plt.subplots(nrows, 2, figsize=(8, 3.8 * nrows), squeeze=False)
    for block, (name, pattern) in enumerate(patterns.items()):
        cells = axes[block * rows_per_model : (block + 1) * rows_per_model].ravel()
        for head, ax in enumerate(cells):
            if head >= n_heads:
                ax.set_visible(False)
                continue
            sns.heatmap(pattern[head], ax=ax, cmap="Blues", vmin=0, vmax=1, cbar=False, square=True,
                        xticklabels=labels[name], yticklabels=labels[name])  # fmt: skip
            ax.set_title(f"{name}, head {head}")
            ax.tick_params(rotation=0)
    fig.supxlabel("key position (token)")
    fig.supylabel("query position")
    fig.tight_layout()
    return fig


@book_figure
def plot_weight_delta_vs_kl(sweep: pd.DataFrame) -> plt.Figure:
    """WeightDelta from π_ref against KL for every DPO checkpoint (step > 0), coloured by β (Park Fig. 3 right)."""
    data = sweep[sweep["step"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    norm = LogNorm(data["beta"].min(), data["beta"].max())
    sns.scatterplot(data=data, x="weight_delta", y="kl", hue="beta", hue_norm=norm, palette="viridis", style="seed",
                    s=18, ax=ax, legend=False)  # fmt: skip
    ax.set(yscale="log", xlabel="WeightDelta(π_θ, π_ref)  (Eq. 7)", ylabel="KL(π_θ ‖ π_ref)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="β")
    fig.tight_layout()
    return fig


@book_figure
def plot_surgery(curves: pd.DataFrame) -> plt.Figure:
    """Park Fig. 4: A's OOD rate against step, and KL of A and of both surgeries against step (mean ± sd over seeds)."""
    data = curves.assign(model=curves["variant"].map(SURGERY_LABELS))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(data=data[data["variant"] == "A"], x="step", y="ood_rate", errorbar="sd", color="black", ax=left)
    left.set(title="OOD rate of A", ylabel="OOD rate", xlabel="DPO step")
    sns.lineplot(data=data, x="step", y="kl", hue="model", hue_order=list(SURGERY_LABELS.values()), errorbar="sd",
                 palette=["black", "tab:green", "tab:blue"], ax=right)  # fmt: skip
    right.set(title="KL after surgery", ylabel="KL(· ‖ π_ref)", xlabel="DPO step")
    right.legend(frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def plot_surgery_shares(curves: pd.DataFrame) -> plt.Figure:
    """Park Fig. 5: left, the attention share of A's change between checkpoints beside the
    KL of A with B's attention; right, OOD(A′) − OOD(A) for both surgeries (mean ± sd over seeds)."""
    a = curves[curves["variant"] == "A"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(data=a, x="step", y="attention_share_step", errorbar="sd", color="purple", ax=left,
                 label="FracWeightDelta(attention), successive checkpoints")  # fmt: skip
    left.set(ylim=(0, 1), ylabel="attention share of the change", xlabel="DPO step")
    twin = left.twinx()
    sns.lineplot(data=curves[curves["variant"] == "attention"], x="step", y="kl", errorbar="sd", color="tab:blue",
                 ax=twin, label="KL of A with B's attention")  # fmt: skip
    twin.set(ylabel="KL")
    lines = left.get_legend_handles_labels(), twin.get_legend_handles_labels()
    left.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], frameon=False, loc="upper right")
    twin.get_legend().remove()
    base = a.set_index(["seed", "step"])["ood_rate"]
    change = curves[curves["variant"] != "A"].assign(
        ood_change=lambda d: d["ood_rate"].to_numpy() - base.loc[list(zip(d["seed"], d["step"], strict=True))].to_numpy(),
        model=lambda d: d["variant"].map(SURGERY_LABELS),
    )
    sns.lineplot(data=change, x="step", y="ood_change", hue="model", style="model", errorbar="sd",
                 palette=["#009E73", "#0072B2"], ax=right)  # fmt: skip
    right.axhline(0, color="grey", lw=0.8)
    lo, hi = right.get_ylim()
    right.axhspan(0, max(hi, 0), color="#D55E00", alpha=0.06)
    right.axhspan(min(lo, 0), 0, color="#0072B2", alpha=0.06)
    right.set(ylabel="OOD(A′) − OOD(A)", xlabel="DPO step", title="above 0: surgery harms; below 0: it helps")
    right.legend(frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def plot_tpm_vs_beta(theorem: pd.DataFrame, instances: dict[str, int]) -> plt.Figure:
    """TPM(A) and TPM(U) of Theorem 2 against β for chosen instances of ``theorem2_table``,
    with the bounds α and 1 − α dashed; one panel per instance (title → instance id)."""
    nrows = -(-len(instances) // 2)  # two panels per row
    fig, axes = plt.subplots(nrows, 2, figsize=(11, 4 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(instances) :]:
        ax.set_visible(False)
    for ax, (title, instance) in zip(axes.flat, instances.items(), strict=False):
        rows = theorem[theorem["instance"] == instance]
        alpha = rows["alpha"].iloc[0]
        ax.plot(rows["beta"], rows["tpm_aligned"], color="#0072B2", marker="o", ms=3, label="TPM(A)")  # colour and marker
        ax.plot(rows["beta"], np.exp(rows["log_tpm_unaligned"]), color="#D55E00", ls="-.", marker="^", ms=3, label="TPM(U)")
        ax.axhline(alpha, color="#0072B2", ls="--", lw=1, label="α")
        ax.axhline(1 - alpha, color="#D55E00", ls=":", lw=1, label="1 − α")
        ax.set(xscale="log", xlabel="β", ylabel="total probability mass", title=title, ylim=(-0.02, 1.02))
    axes[0, 0].legend(frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def plot_unaligned_mass(curves: pd.DataFrame) -> plt.Figure:
    """Left: mean unaligned mass over test prompts against step, beside the greedy OOD
    rate; right: log10 of the smallest unaligned mass over prompts. One colour per β,
    mean ± sd over seeds. curves: seed, beta, step, mean_mass, min_log10_mass, ood_rate."""
    data = curves.assign(run=curves["beta"].map(lambda b: f"β={b:g}"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    palette = sns.color_palette("viridis", data["run"].nunique())
    sns.lineplot(data=data, x="step", y="mean_mass", hue="run", palette=palette, errorbar="sd", ax=left)
    sns.lineplot(data=data, x="step", y="ood_rate", hue="run", palette=palette, errorbar=None, ls="--", ax=left, legend=False)
    left.set(ylabel="unaligned mass (solid) / greedy OOD rate (dashed)", xlabel="DPO step", title="mean over test prompts")
    sns.lineplot(data=data, x="step", y="min_log10_mass", hue="run", palette=palette, errorbar="sd", ax=right, legend=False)
    right.set(ylabel="log10 unaligned mass", xlabel="DPO step", title="smallest over test prompts")
    fig.tight_layout()
    return fig


@book_figure
def plot_temperature(temperatures: pd.DataFrame) -> plt.Figure:
    """Mean unaligned mass over test prompts against sampling temperature at the last
    checkpoint, one line per β (mean ± sd over seeds). temperatures: seed, beta, temperature, mass."""
    data = temperatures.assign(run=temperatures["beta"].map(lambda b: f"β={b:g}"))
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=data, x="temperature", y="mass", hue="run", palette="viridis", marker="o", errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="sampling temperature T", ylabel="mean unaligned mass")
    fig.tight_layout()
    return fig


# Okabe–Ito colours, and a dash and a marker per arm: no arm is told by colour alone
ARM_PALETTE = {"no SFT": "#D55E00", "full SFT": "#0072B2", "small SFT": "#009E73"}
ARM_DASHES = {"no SFT": "", "full SFT": (5, 2), "small SFT": (1.5, 1.5)}
ARM_MARKERS = {"no SFT": "o", "full SFT": "s", "small SFT": "^"}


@book_figure
def plot_gradient_bound(cases: pd.DataFrame) -> plt.Figure:
    """Theorem 1 as we read it, for every (training input, checkpoint) of ``bound_cases``: the exact
    ‖∇V_x‖ / (6·L·γ) against the reward std on log-log axes, coloured by arm, the cases in the
    theorem's regime (small std, low reward) ringed, and the bound std^(2/3) every point must lie
    under (γ exact where computed, else from below, so a point is never drawn too low)."""
    data = cases[cases["grad_norm"] > 0].assign(scaled=lambda d: d["ratio_best"] * d["std"] ** (2 / 3))
    fig, ax = plt.subplots(figsize=(7, 5))
    sns.scatterplot(data=data, x="std", y="scaled", hue="arm", palette=ARM_PALETTE, style="arm", markers=ARM_MARKERS, s=8,
                    alpha=0.35, linewidth=0, ax=ax)  # fmt: skip
    regime = data[data["regime"]]
    ax.scatter(regime["std"], regime["scaled"], s=30, facecolors="none", edgecolors="black", lw=0.6,
               label="small std, low reward")  # fmt: skip
    grid = np.geomspace(data["std"].min(), data["std"].max(), 50)
    ax.plot(grid, grid ** (2 / 3), color="black", lw=1.5, label="bound: std^(2/3)")
    ax.set(xscale="log", yscale="log", xlabel="reward std under π(·|x)", ylabel="‖∇V_x‖ / (6 · L · γ(x; θ))")
    ax.legend(frameon=False, markerscale=2)
    fig.tight_layout()
    return fig


@book_figure
def plot_gain_by_std(stall: pd.DataFrame, n_bins: int = 6) -> plt.Figure:
    """Reward gain over RL fine-tuning of the low-reward training inputs (``stall_table``
    rows with `low`), in equal-count bins of their reward std when RFT began, by arm; and
    each input's gain against that std."""
    low = stall[stall["low"]]
    data = low.assign(std_bin=pd.qcut(low["initial_std"], n_bins, duplicates="drop").map(lambda b: f"{b.left:.3f}–{b.right:.3f}"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    sns.barplot(data=data, x="std_bin", y="gain", color="grey", errorbar="sd", ax=left)
    left.set(xlabel="initial reward std (equal-count bins)", ylabel="V_final − V_initial", title="low-reward inputs, all arms")
    left.tick_params(axis="x", rotation=30)
    sns.scatterplot(data=data, x="initial_std", y="gain", hue="arm", palette=ARM_PALETTE, style="arm", markers=ARM_MARKERS,
                    s=16, ax=right)  # fmt: skip
    right.axvline(0.05, color="grey", ls="--", lw=0.8)
    right.set(xscale="log", xlabel="initial reward std", ylabel="V_final − V_initial", title="each low-reward input")
    fig.tight_layout()
    return fig


@book_figure
def plot_rft_curves(curves: pd.DataFrame) -> plt.Figure:
    """Expected training reward and the number of small-std, low-reward training inputs
    against RFT step, one line per arm (mean ± sd over seeds)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(data=curves, x="step", y="reward_train", hue="arm", palette=ARM_PALETTE, style="arm", dashes=ARM_DASHES,
                 errorbar="sd", ax=left)  # fmt: skip
    left.set(xlabel="RFT step", ylabel="mean V_x over training inputs", title="expected reward")
    sns.lineplot(
        data=curves,
        x="step",
        y="small_std_low_reward",
        hue="arm",
        palette=ARM_PALETTE,
        style="arm",
        dashes=ARM_DASHES,
        errorbar="sd",
        ax=right,
        legend=False,
    )
    right.set(xlabel="RFT step", ylabel="inputs", title="small-std, low-reward training inputs")
    fig.tight_layout()
    return fig


@book_figure
def plot_similarity(similarity: np.ndarray, labels: list[str]) -> plt.Figure:
    """Cosine similarity of token unembeddings as an annotated heat map."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(similarity, xticklabels=labels, yticklabels=labels, cmap="RdBu_r", vmin=-1, vmax=1, annot=True, fmt=".1f",
                annot_kws={"size": 10}, square=True, ax=ax)  # fmt: skip
    ax.set_title("cosine similarity of unembeddings W_z")
    fig.tight_layout()
    return fig


@book_figure
def plot_displacement_geometry(geometry: pd.DataFrame, pairs: pd.DataFrame, features: pd.DataFrame) -> plt.Figure:
    """Left: one-step change of log π(z) (standardised over z within each run) against
    ⟨W_z, W_y+ − W_y−⟩ for z ∉ {y+, y−}, in the tiny LM and in its unconstrained-features
    model. Middle: change of log π(y+) against ⟨W_y+, W_y−⟩ over every pair of answer tokens
    (LM). Right: the same over random instances of the unconstrained-features model."""
    fig, grid = plt.subplots(2, 2, figsize=(11, 8))
    axes = grid.ravel()
    axes[3].set_visible(False)
    runs = geometry.groupby(["seed", "statement", "pair"])
    columns = ("dlogp_lm", "dlogp_features")
    centred = geometry.assign(**{c: (geometry[c] - runs[c].transform("mean")) / runs[c].transform("std") for c in columns})
    long = centred.melt(id_vars=["inner"], value_vars=["dlogp_lm", "dlogp_features"], var_name="model", value_name="dlogp")
    long["model"] = long["model"].map({"dlogp_lm": "tiny LM", "dlogp_features": "unconstrained features"})
    sns.scatterplot(data=long, x="inner", y="dlogp", hue="model", s=10, alpha=0.6, ax=axes[0])
    axes[0].set(xlabel="⟨W_z, W_y+ − W_y−⟩", ylabel="Δ log π(z), one step (standardised)", title="where the mass goes")
    sns.scatterplot(data=pairs, x="inner_pos_neg", y="dlogp_pos", hue="seed", palette="deep", s=14, ax=axes[1])
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(xlabel="⟨W_y+, W_y−⟩", ylabel="Δ log π(y+) after one step", title="tiny LM, every answer pair")
    sns.scatterplot(data=features, x="inner_pos_neg", y="dlogp_pos_first_order", s=10, color="tab:purple", ax=axes[2])
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set(xlabel="⟨W_y+, W_y−⟩", ylabel="d log π(y+) / dη", title="unconstrained features, random instances")
    fig.tight_layout()
    return fig


@book_figure
def plot_ches_ranking(table: pd.DataFrame, measures: dict[str, str]) -> plt.Figure:
    """One panel per score: the score of each pair against its displacement Δ log π(y+)
    (first seed); and a last panel with Spearman(score, −displacement) per seed. Two panels per row."""
    first = table[table["seed"] == table["seed"].min()]
    nrows = -(-(len(measures) + 1) // 2)  # two panels per row, legible at the book's column width
    fig, grid = plt.subplots(nrows, 2, figsize=(9, 3.6 * nrows), squeeze=False)
    axes = grid.ravel()[: len(measures) + 1]
    for ax in grid.ravel()[len(measures) + 1 :]:
        ax.remove()
    for ax, (column, title) in zip(axes, measures.items(), strict=False):
        sns.scatterplot(data=first, x=column, y="displacement", s=12, ax=ax)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel=title, ylabel="Δ log π(y+) (single-pair DPO)")
    rho = (
        table.groupby("seed")
        .apply(lambda g: pd.Series({measures[m]: g[m].rank().corr((-g["displacement"]).rank()) for m in measures}),
               include_groups=False)
        .reset_index()
        .melt(id_vars="seed", var_name="score", value_name="rho")
    )  # fmt: skip
    sns.barplot(data=rho, x="score", y="rho", errorbar="sd", color="tab:blue", ax=axes[-1])
    axes[-1].axhline(0, color="grey", lw=0.8)
    axes[-1].set(xlabel="", ylabel="Spearman ρ with −Δ log π(y+)", title="mean ± sd over seeds")
    axes[-1].tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


@book_figure
def plot_variant_curves(curves: pd.DataFrame, metrics: dict[str, str], ncols: int = 2) -> plt.Figure:
    """Metric against DPO step, one line per training variant (all pairs, CHES filters,
    SFT terms), mean ± sd over seeds. curves: ``run_mitigations`` or ``run_safety`` output."""
    order = list(dict.fromkeys(curves["variant"]))
    kinds = curves.groupby("variant")["kind"].first()
    filters = [v for v in order if kinds[v] == "CHES filter"]
    sfts = [v for v in order if kinds[v] == "SFT term"]
    palette = {v: "black" for v in order if kinds[v] == "all pairs"}
    palette |= dict(zip(filters, sns.color_palette("Blues_r", len(filters) + 1), strict=False))
    palette |= dict(zip(sfts, sns.color_palette("Oranges_r", len(sfts) + 1), strict=False))
    patterns = ["", (5, 2), (1.5, 1.5), (6, 2, 1.5, 2), (3, 3)]  # shades of one hue need a dash each to be told apart
    dashes = {v: patterns[i % len(patterns)] for group in ([v for v in order if v not in filters + sfts], filters, sfts)
              for i, v in enumerate(group)}  # fmt: skip
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, (column, title) in zip(axes.flat, metrics.items(), strict=False):
        sns.lineplot(data=curves, x="step", y=column, hue="variant", hue_order=order, palette=palette, style="variant",
                     style_order=order, dashes=dashes, errorbar="sd", ax=ax, legend=ax is axes.flat[0])  # fmt: skip
        ax.set(xlabel="DPO step", ylabel=title)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[0].get_legend().remove()
    legend_rows = -(-len(labels) // 3)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False)
    fig.tight_layout(rect=(0, 0.35 * legend_rows / fig.get_figheight(), 1, 1))
    return fig


@book_figure
def plot_ches_by_kind(pairs: pd.DataFrame, column: str, order: list, title: str) -> plt.Figure:
    """CHES of the training pairs (all seeds) split by `column`, a box per value in `order`."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.boxplot(data=pairs, x=column, y="ches", order=order, color="tab:blue", ax=ax)
    ax.set(xlabel=title, ylabel="CHES under the reference")
    fig.tight_layout()
    return fig


@book_figure
def plot_drift_map(table: pd.DataFrame, paper: pd.Series | None = None) -> plt.Figure:
    """When does DPO drift: for each optimizer (a panel), the change of the greedy OOD rate against
    each seed's own reference over learning rate × β, in points (mean over seeds, colour), every cell
    annotated with its 95 % interval and, where runs collapsed, how many; cells where most seeds
    collapse hatched, and the paper's recipe (`paper`: a boolean per row of `table`, e.g.
    ``drift_map.analysis.is_paper_recipe``) outlined. table: ``drift_map.analysis.cell_table`` rows of
    the grid."""
    optimizers = list(dict.fromkeys(table["optimizer"]))
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(8, 3.6 * len(optimizers)), squeeze=False)
    paper = pd.Series(False, index=table.index) if paper is None else paper
    for ax, optimizer in zip(axes[:, 0], optimizers, strict=True):
        cells = table[table["optimizer"] == optimizer]
        index, columns = sorted(cells["lr"].unique()), sorted(cells["beta"].unique())
        change = (100 * cells.pivot(index="lr", columns="beta", values="ood_change_mean")).loc[index, columns]
        text = cells.assign(text=[_change_text(r) for r in cells.itertuples()]).pivot(index="lr", columns="beta", values="text")
        sns.heatmap(change, ax=ax, vmin=-100, vmax=100, center=0, cmap="vlag", annot=text.loc[index, columns], fmt="",
                    annot_kws={"fontsize": 8}, cbar_kws={"label": "OOD change (points)"},
                    xticklabels=[f"{b:.3g}" for b in columns], yticklabels=[f"{lr:.2g}" for lr in index])  # fmt: skip
        for row in cells.itertuples():
            x, y = columns.index(row.beta), index.index(row.lr)
            if row.collapsed > row.seeds / 2:
                ax.add_patch(plt.Rectangle((x, y), 1, 1, fill=False, hatch="///", edgecolor="0.35", lw=0))
            if paper.loc[row.Index]:
                ax.add_patch(plt.Rectangle((x, y), 1, 1, fill=False, edgecolor="black", lw=2.5))
        ax.set(title=f"{optimizer}: greedy OOD rate, change against each seed's reference", xlabel="β", ylabel="learning rate")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def _change_text(row) -> str:
    """A drift-map cell's annotation: the OOD change in points with its interval, and collapsed seeds if any."""
    estimate = f"{100 * row.ood_change_mean:+.0f}"
    interval = f"[{100 * row.ood_change_low:+.0f}, {100 * row.ood_change_high:+.0f}]" if np.isfinite(row.ood_change_low) else ""
    collapsed = f"\ncollapse {row.collapsed}/{row.seeds}" if row.collapsed else ""
    return f"{estimate}\n{interval}{collapsed}"


@book_figure
def plot_drift_arms(table: pd.DataFrame, base_label: str) -> plt.Figure:
    """The one-at-a-time arms around the base recipe: drift share and final OOD rate and exact
    OOD mass (mean ± sd over seeds) of each variant, the base first."""
    cells = table.assign(variant=[base_label + " (base)" if a == "grid" else f"{a}: {lb}" for a, lb in
                                  zip(table["arm"], table["label"], strict=True)])  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(cells) + 1.6), sharey=True)
    y = np.arange(len(cells))
    axes[0].barh(y, cells["drift_fraction"], color="firebrick")
    axes[0].set(xlim=(0, 1), xlabel="share of seeds that drift", yticks=y, yticklabels=cells["variant"], title="drift")
    axes[1].errorbar(100 * cells["ood_mean"], y - 0.15, xerr=100 * cells["ood_sd"], fmt="o", label="greedy OOD rate")
    axes[1].errorbar(100 * cells["ood_mass_mean"], y + 0.15, xerr=100 * cells["ood_mass_sd"], fmt="s",
                     label="exact OOD probability mass")  # fmt: skip
    axes[1].set(xlim=(-2, 102), xlabel="final value (%), mean ± sd over seeds", title="how far out of distribution")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / fig.get_figheight()), ncol=1, frameon=False)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


@book_figure
def plot_drift_mechanism(curves: pd.DataFrame) -> plt.Figure:
    """One recipe's runs along training, one line per seed: greedy OOD rate and exact OOD mass
    on the test prompts; mean log π(y_w) and log π(y_l) of the scored training pairs beside the
    log of the mean OOD mass on the test prompts; and, among those pairs whose prompt gets an OOD
    greedy answer y_OOD, the share with π(y_OOD) > π(y_w) > π(y_l)."""
    data = curves.assign(seed=curves["seed"].astype(str), log_ood=np.log(curves["ood_mass"].clip(lower=1e-300)))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sns.lineplot(data=data, x="epoch", y="ood_rate", hue="seed", ax=axes[0, 0])
    axes[0, 0].set(title="greedy OOD rate (test prompts)", xlabel="DPO epoch", ylabel="share of prompts", ylim=(-0.02, 1.02))
    sns.lineplot(data=data, x="epoch", y="ood_mass", hue="seed", ax=axes[0, 1], legend=False)
    axes[0, 1].set(title="exact OOD probability mass (test prompts)", xlabel="DPO epoch", ylabel="mean P(OOD | s)",
                   ylim=(-0.02, 1.02))  # fmt: skip
    long = data.melt(id_vars=["seed", "epoch"], value_vars=["chosen_logp", "rejected_logp", "log_ood"], var_name="quantity")
    names = {"chosen_logp": "log π(y_w)", "rejected_logp": "log π(y_l)", "log_ood": "log mean P(OOD), test prompts"}
    sns.lineplot(data=long.assign(quantity=long["quantity"].map(names)), x="epoch", y="value", hue="quantity", units="seed",
                 estimator=None, ax=axes[1, 0], linewidth=0.9)  # fmt: skip
    axes[1, 0].set(title="training pairs: log-probabilities (one line per seed)", xlabel="DPO epoch", ylabel="nats")
    for ax, ncol in ((axes[0, 0], 5), (axes[1, 0], 2)):  # below its panel, never over the curves
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False, title=None)
    sns.lineplot(data=data, x="epoch", y="ordering", hue="seed", ax=axes[1, 1], legend=False)
    axes[1, 1].axhline(0.5, color="grey", linestyle=":")
    axes[1, 1].set(
        title="π(y_OOD) > π(y_w) > π(y_l), pairs with OOD greedy", xlabel="DPO epoch", ylabel="share of pairs", ylim=(-0.02, 1.02)
    )
    fig.tight_layout()
    return fig


@book_figure
def plot_beta_kl(curves: pd.DataFrame, lrs: dict[str, float]) -> plt.Figure:
    """KL along training for every β (seed mean ± sd), one panel per optimizer at the learning
    rate lrs[optimizer]: where the curves of different β coincide, β has not acted yet."""
    nrows = -(-len(lrs) // 2)
    fig, axes = plt.subplots(nrows, 2, figsize=(11, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(lrs) :]:
        ax.set_visible(False)
    for ax, (optimizer, lr) in zip(axes.flat, lrs.items(), strict=False):
        data = curves[(curves["optimizer"] == optimizer) & np.isclose(curves["lr"], lr) & (curves["step"] > 0)]
        data = data.assign(β=data["beta"].map(lambda b: f"{b:.3g}"))
        sns.lineplot(data=data, x="epoch", y="kl", hue="β", palette="viridis", errorbar="sd", ax=ax)
        ax.set(yscale="log", title=f"{optimizer} at lr {lr:.2g}", xlabel="DPO epoch", ylabel="KL(π_θ ‖ π_ref) (nats)")
    fig.tight_layout()
    return fig


@book_figure
def plot_displacement_map(table: pd.DataFrame, recipe: dict | None = None) -> plt.Figure:
    """The displacement map, one panel per head (trained, frozen): the share of runs in which π(y+)
    fell, per cell; rows = pair and its measured π_ref(y+) (mean over the row's runs), columns =
    optimizer and the rebalancing (h ÷ s, W × s: the same logits, ‖W‖²/‖h‖² × s⁴); each cell
    'displaced % (catastrophic %)', left empty where no run displaced. ``recipe`` (cell values, e.g.
    the chapter's literal run) is outlined. table: ``displacement_map.map_table``."""
    p_ref = table.groupby(["pair", "lead_weight"], sort=False)["p_ref"].transform("mean")
    rebalanced = zip(table["optimizer"], table["scale"], strict=True)
    shares = zip(table["displaced"], table["catastrophic"], strict=True)
    cells = table.assign(
        row=[f"{p}, π_ref(y+) ≈ {r:.2f}" for p, r in zip(table["pair"], p_ref, strict=True)],
        column=[f"{o}\nh ÷ {s:g}, W × {s:g}" if s != 1 else f"{o}\nas trained" for o, s in rebalanced],
        text=[f"{100 * d:.0f}\n({100 * c:.0f})" if d > 0 or c > 0 else "" for d, c in shares],  # empty: none displaced
    )
    rows, columns = list(dict.fromkeys(cells["row"])), list(dict.fromkeys(cells["column"]))
    heads = list(dict.fromkeys(cells["head"]))
    fig, axes = plt.subplots(len(heads), 1, figsize=(max(6.0, 0.95 * len(columns) + 2.5), (0.55 * len(rows) + 1.6) * len(heads)),
                             squeeze=False)  # fmt: skip
    for ax, head in zip(axes[:, 0], heads, strict=True):
        panel = cells[cells["head"] == head]
        share = panel.pivot(index="row", columns="column", values="displaced").reindex(index=rows, columns=columns)
        text = panel.pivot(index="row", columns="column", values="text").reindex(index=rows, columns=columns).fillna("")
        sns.heatmap(100 * share, ax=ax, vmin=0, vmax=100, cmap="rocket_r", annot=text, fmt="", annot_kws={"fontsize": 10},
                    cbar_kws={"label": "runs in which π(y+) fell (%)"}, linewidths=0.5, linecolor="white")  # fmt: skip
        marked = panel[np.logical_and.reduce([panel[k] == v for k, v in (recipe or {}).items()])] if recipe else panel.iloc[:0]
        for row, column in zip(marked["row"], marked["column"], strict=True):
            ax.add_patch(plt.Rectangle((columns.index(column), rows.index(row)), 1, 1, fill=False, lw=2.5, ec="#0072B2"))
        which = {"frozen": "head frozen (W fixed, h trained)", "slow": "head at a tenth of the body's learning rate"}.get(
            head, f"head {head}"
        )
        ax.set(xlabel="optimizer, and the rebalancing of the last hidden state h against the unembedding W",
               ylabel="pair (y+/y−) and its π_ref(y+)", title=f"{which}: displaced % (catastrophic %)")  # fmt: skip
    fig.tight_layout()
    return fig


@book_figure
def plot_ches_protocol(protocol: pd.DataFrame) -> plt.Figure:
    """The paper's protocol for every score: the change of log π(y+) of the preferred responses after
    DPO on the lowest-, median- and highest-scoring subsets, as a fraction of its ceiling
    log(1/π_ref(y+)), mean ± sd over seeds, a bar per score (hatched per score, not told by colour alone)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    order = ["lowest", "median", "highest"]
    measures = list(dict.fromkeys(protocol["measure"]))
    sns.barplot(data=protocol, x="subset", y="ceiling_fraction", hue="measure", order=order, hue_order=measures,
                errorbar="sd", palette="colorblind", ax=ax)  # fmt: skip
    for bars, hatch in zip(ax.containers, ["", "//", "..", "xx"], strict=False):
        for bar in bars:
            bar.set_hatch(hatch)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training subset by score", ylabel="Δ log π(y+) / log(1/π_ref(y+))")
    ax.legend(title="score", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(measures), frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def plot_update_axis(bands: pd.DataFrame, cells: pd.DataFrame) -> plt.Figure:
    """When DPO drifts along the number of updates: for each task and optimizer (a panel), the
    change of the greedy OOD rate against each seed's reference along training (mean over seeds,
    band: its 95 % interval), a colour per learning rate and a dash per β; a cross where most seeds
    have collapsed by that horizon. bands: ``drift_map.updates.update_curves``; cells:
    ``drift_map.updates.update_cells``."""
    panels = list(dict.fromkeys(zip(bands["task"], bands["optimizer"], strict=True)))
    ncols = min(MAX_PANELS_PER_ROW, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    lrs, betas = sorted(bands["lr"].unique()), sorted(bands["beta"].unique())
    colours = dict(zip(lrs, sns.color_palette("colorblind", len(lrs)), strict=True))
    dashes = dict(zip(betas, ["-", "--", ":", "-."] * len(betas), strict=False))
    for ax, (task, optimizer) in zip(axes.ravel(), panels, strict=False):
        mine = bands[(bands["task"] == task) & (bands["optimizer"] == optimizer) & (bands["step"] > 0)]
        for (lr, beta), line in mine.groupby(["lr", "beta"]):
            ax.plot(line["step"], 100 * line["ood_change_mean"], color=colours[lr], linestyle=dashes[beta],
                    label=f"lr {lr:g}, β {beta:g}")  # fmt: skip
            low, high = (100 * line[c].clip(-1, 1) for c in ("ood_change_low", "ood_change_high"))
            ax.fill_between(line["step"], low, high, color=colours[lr], alpha=0.12, linewidth=0)
        broken = cells[(cells["task"] == task) & (cells["optimizer"] == optimizer) & cells["collapse_regime"]]
        ax.scatter(broken["updates"], 100 * broken["ood_change_mean"], marker="x", color="black", s=60, zorder=3,
                   label="most seeds collapsed")  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(10, color="grey", lw=0.8, linestyle=":")
        ax.set(xscale="log", title=f"{task.replace('_', ' ')} task, {optimizer}", xlabel="DPO updates (epochs)",
               ylabel="OOD rate change (points)", ylim=(-100, 100))  # fmt: skip
        horizons = cells[cells["task"] == task].drop_duplicates("updates").sort_values("updates")
        ticks = [f"{u}\n({e})" for u, e in zip(horizons["updates"], horizons["read_epoch"], strict=True)]
        ax.set_xticks(horizons["updates"], ticks)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), frameon=False)
    fig.tight_layout()
    return fig
