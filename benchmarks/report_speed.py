"""The Performance page on training speed: one model and the 30-β sweep against TRL, evaluation and the
matmul rate against the machine's limit, the targets, scaling, and the sweep on a GPU."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from benchmarks.report_common import load, machine_line, markdown, save, source, table
from benchmarks.report_time import time_targets

TARGETS = {"one model vs TRL": 5.0, "fraction of peak": 0.45}  # the speed issue's; the sweep's ratios are quoted, not judged

Checks = list[tuple[str, float]]  # (a name in TARGETS, its measured value)


def verdict(value: float, target: float) -> str:
    return f"**met** ({value:.2f} ≥ {target:g})" if value >= target else f"**not met** ({value:.2f} < {target:g})"


def one_model() -> tuple[list[str], Checks]:
    """The section on one model trained by the toolkit, by TRL and by a plain loop (throughput.csv), and its check."""
    throughput, path = load("throughput")
    parts = ["## One model: the toolkit against TRL\n"]
    if throughput is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.throughput`.\n"], []
    parts.append(
        f"Machine: {machine_line(throughput)}. Same data (the KL sweep's number-line pairs), batch 16, RMSprop 5e-5, "
        f"β 0.1, {int(throughput['steps'].iloc[0])} steps of each method, alternating, best of three. TRL and the "
        "plain loop train a Hugging Face GPT-2 of the toolkit model's shape (1 layer, d 128, 4 heads, MLP 128, "
        "12 symbols + pad + EOS), built locally.\n"
    )
    columns = {"method": "method", "pairs_per_s": "pairs / s", "best_s": "best wall (s)", "vs_trl": "× TRL"}
    parts.append(table(throughput, columns, {"pairs_per_s": ",.0f", "best_s": ".2f", "vs_trl": ".2f"}))
    toolkit = throughput.loc[throughput["method"].str.startswith("toolkit"), "vs_trl"].iloc[0]
    parts.append(source(path))
    return parts, [("one model vs TRL", toolkit)]


def sweep() -> tuple[list[str], Checks]:
    """The section on the 30-β sweep's pair-updates per second and the machine's limit (sweep_speed.csv), and its checks."""
    sweep, path = load("sweep_speed")
    parts = ["## The 30-β sweep: pair-updates per second\n"]
    if sweep is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.sweep_speed`.\n"], []
    parts.append(
        f"Machine: {machine_line(sweep)}. Thirty models (one per β) trained for {int(sweep['steps'].iloc[0])} steps of "
        "batch 16 each; the per-β loops were timed on a subset of β in the same run and scaled to 30. A pair-update "
        "is one preference pair used in one model's step.\n"
    )
    parts.append(table(sweep, {"method": "method", "betas_timed": "β timed", "seconds_30_betas": "s for 30 β",
                               "pair_updates_per_s": "pair-updates / s", "batched_speedup": "batched ×"},
                       {"seconds_30_betas": ".1f", "pair_updates_per_s": ",.0f", "batched_speedup": ".2f"}))  # fmt: skip
    by_method = sweep.set_index("method")["batched_speedup"]
    plain = by_method[[m for m in by_method.index if m.startswith("plain")]]
    trl = by_method[[m for m in by_method.index if m.startswith("TRL")]]
    batched = sweep.iloc[0]
    plain_fraction = float(sweep.loc[sweep["method"].str.startswith("plain"), "fraction_of_peak"].iloc[0])
    checks = [("fraction of peak", float(batched["fraction_of_peak"]))]
    vs_trl = f" and {float(trl.iloc[0]):.1f}× TRL run one β after another" if len(trl) else ""
    parts.append(f"\nThe batched sweep trains {float(plain.iloc[0]):.1f}× faster than a per-β loop of the toolkit{vs_trl}.\n")
    parts.append(
        f"\n**The machine's limit.** One pair-update costs {batched['mflop_per_pair_update']:.1f} MFLOP as the toolkit "
        "computes it (torch's FlopCounterMode on one batched step: forward and backward of the policy on chosen and "
        "rejected, each sequence computed in full, so the shared prompt is computed twice; the reference log-probs are "
        f"cached once per run and not counted). The batched sweep's training runs at {batched['gflops']:.1f} GFLOP/s "
        f"against a measured peak of {batched['peak_gflops']:.0f} GFLOP/s: {batched['fraction_of_peak']:.0%} of peak. "
        f"The plain per-β loop already runs at {plain_fraction:.0%} of peak, so 10× over it would need "
        f"{10 * plain_fraction:.0%} of peak with the same FLOPs per pair-update. This machine's matmul rate drifts by "
        "tens of percent from one run to the next, so compare ratios taken within one run.\n"
    )
    parts.append(source(path))
    return parts, checks


def evaluation() -> list[str]:
    """The section on one evaluation, whole and part by part, against the peak matmul rate (eval_speed.csv)."""
    evaluation, path = load("eval_speed")
    parts = ["## Evaluation against the limit\n"]
    if evaluation is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.eval_speed`.\n"]
    first = evaluation.iloc[0]
    parts.append(
        f"Machine: {machine_line(evaluation)}. One evaluation of {int(first['models'])} policies batched as one ensemble "
        f"against an SFT reference, at the KL sweep's paper settings ({int(first['test_prompts'])} test prompts, "
        f"{int(first['kl_samples'])} KL samples each, accuracy and margin on 1,024 test pairs), whole and part by part; "
        "FLOPs counted by torch's FlopCounterMode, the best of three timings, against the peak matmul rate measured "
        "around them.\n"
    )
    parts.append(table(evaluation, {"part": "part", "seconds": "seconds", "gflop": "GFLOP", "gflops": "GFLOP/s",
                                    "fraction_of_peak": "of peak"},
                       {"seconds": ".2f", "gflop": ".2f", "gflops": ".1f", "fraction_of_peak": ".0%"}))  # fmt: skip
    training = ""
    sweep, _ = load("sweep_speed")
    if sweep is not None:
        where = "" if sweep.iloc[0]["cpu"] == first["cpu"] else f", measured on {sweep.iloc[0]['cpu']}"
        training = f"; training runs at {sweep.iloc[0]['fraction_of_peak']:.0%} (the sweep above{where})"
    slowest = evaluation.iloc[1:].sort_values("fraction_of_peak").iloc[0]
    parts.append(
        f"\nA whole evaluation runs at {first['fraction_of_peak']:.0%} of the peak{training}. The furthest from it is "
        f"{slowest['part']} ({slowest['fraction_of_peak']:.0%}): decoding computes one new token per sequence per step, "
        "so its matrices have a single row per sequence and the per-step overhead weighs most.\n"
    )
    parts.append(source(path))
    return parts


def peak_rate() -> list[str]:
    """The section on the dense-matmul rate at the model's shapes (peak.csv)."""
    peak, path = load("peak")
    parts = ["## Dense-matmul rate at the model's shapes\n"]
    if peak is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.peak`.\n"]
    parts.append(table(peak, {"shape": "shape", "gflops": "GFLOP/s", "fraction_of_peak": "of peak"},
                       {"gflops": ".1f", "fraction_of_peak": ".0%"}))  # fmt: skip
    parts.append(source(path))
    return parts


def targets(checks: Checks) -> list[str]:
    """The targets table: the whole book's wall times, then each speed check against its TARGETS entry; [] without any."""
    rows = time_targets() + [(name, f"≥ {TARGETS[name]:g}", verdict(value, TARGETS[name])) for name, value in checks]
    if not rows:
        return []
    return [
        "## Targets\n",
        markdown(pd.DataFrame(rows, columns=["target", "goal", "measured"])),
        "What stands between the toolkit and the limit: each step's matrices are small (16 pairs × 2 sequences × "
        "about 9 tokens per model), so the elementwise work (softmax, LayerNorm, GELU, the optimizer) and copies "
        "weigh more than the matmuls, and the prompt is computed twice per pair; evaluation (its own section "
        "above) runs further still from the limit. The next section measures each part.\n",
    ]


def scaling(figures: Path) -> list[str]:
    """The section on throughput as the models trained at once grow and wall time as the data grows (scaling.csv),
    its figure saved as figures/scaling.png."""
    scaling, path = load("scaling")
    parts = ["## Scaling\n"]
    if scaling is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.scaling`.\n"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    models = scaling[scaling["axis"].str.startswith("models")]
    data = scaling[~scaling["axis"].str.startswith("models")]
    sns.lineplot(data=models, x="size", y="pair_updates_per_s", marker="o", ax=axes[0])
    axes[0].set(xscale="log", xlabel="models trained at once (β)", ylabel="pair-updates / s", title="throughput vs models")
    sns.lineplot(data=data, x="size", y="seconds", marker="o", ax=axes[1])
    axes[1].set(xlabel="training pairs (30 β, one epoch)", ylabel="wall time (s)", title="cost vs data")
    fig.tight_layout()
    save(fig, figures / "scaling.png")
    parts.append("![Pair-updates per second as the number of β trained at once grows, and wall time as the data grows]"
                 "(performance/scaling.png)\n")  # fmt: skip
    columns = {"axis": "axis", "size": "size", "seconds": "seconds", "pair_updates_per_s": "pair-updates / s"}
    parts.append(table(scaling, columns, {"seconds": ".2f", "pair_updates_per_s": ",.0f"}))
    parts.append(source(path))
    return parts


def beyond_the_laptop() -> list[str]:
    """The section on the sweep benchmark on a GPU (sweep_speed_gpu.csv), or that none was available."""
    gpu, path = load("sweep_speed_gpu")
    parts = ["## Beyond the laptop\n"]
    if gpu is None:
        return [
            *parts,
            "No GPU was available where these numbers were taken, so this page has no GPU row. On a machine with CUDA, "
            "`python -m benchmarks.sweep_speed --device cuda` adds one.\n",
        ]
    parts.append(f"The sweep benchmark on {gpu['device'].iloc[0]} (`--device cuda`; TRL not run there):\n")
    columns = {"method": "method", "pair_updates_per_s": "pair-updates / s", "fraction_of_peak": "of the GPU's matmul peak"}
    parts.append(table(gpu, columns, {"pair_updates_per_s": ",.0f", "fraction_of_peak": ".0%"}))
    parts.append(source(path))
    return parts


def replicates() -> list[str]:
    """The section on replicates as members: several seeds' runs as one ensemble against one per seed (replicates.csv)."""
    df, path = load("replicates")
    parts = ["## Replicates as members\n"]
    if df is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.replicates`.\n"]
    first = df.iloc[0]
    parts.append(
        f"Machine: {machine_line(df)}. The drifting arm's shape on the KL sweep's task ({int(first['betas'])} β, "
        f"RMSprop, batch 16) over {int(first['seeds'])} seeds, each with its own reference, {int(first['steps'])} "
        "steps: one ensemble per seed, one seed after another, against every (seed, β) as a member of one ensemble, "
        "each against its own seed's reference (`References`: each seed's reference stored and run once), as "
        "`run_sft_then_dpo` and `run_mitigations` now train them. One evaluation of the chapter's `Evaluator` and "
        "SFT of the seeds' references in both layouts.\n"
    )
    parts.append(table(df, {"phase": "phase", "layout": "layout", "seconds": "seconds", "speedup_of_members": "speed-up"},
                       {"seconds": ".2f", "speedup_of_members": ".2f"}))  # fmt: skip
    parts.append(
        "\nOn two CPU cores a 10-member ensemble already keeps the matmuls busy, so members buy little there: "
        "the gain is in training (the scaling section above: throughput flattens past about 30 models); evaluation "
        "batches about 1,024 sequences per forward in either layout. The layout is for devices that a 10-member "
        "ensemble leaves idle: on a GPU a chapter becomes a few large ensembles instead of one small one per seed.\n"
    )
    parts.append(source(path))
    return parts


def long_runs() -> list[str]:
    """The section on the levers left for the paper profile's longest runs (long_runs.csv): a compiled forward and
    a flat optimizer buffer against the toolkit's step, on the drifting arms' shape."""
    df, path = load("long_runs")
    parts = ["## The longest runs: what is left to buy\n"]
    if df is None:
        return [*parts, "Not measured yet: run `python -m benchmarks.long_runs`.\n"]
    first = df.iloc[0]
    parts.append(
        f"Machine: {machine_line(df)}. The shape of the paper profile's 30-epoch drifting arms, where most of its "
        f"time goes: {int(first['members'])} members on the KL sweep's task at Park's full size (RMSprop 5e-4, "
        f"batch 16), one whole DPO step (forward, backward, optimizer) three ways, timed in one run. *Saving over a "
        f"run* is the share of a {int(first['run_updates']):,}-update run's training time saved, compile included.\n"
    )
    columns = {"way": "way", "ms_per_step": "ms / step", "speedup": "speed-up", "compile_s": "compile (s)",
               "break_even_updates": "pays after (updates)", "run_saving": "saving over a run",
               "max_rel_grad_diff": "largest gradient difference", "same_bits": "the toolkit's bits"}  # fmt: skip
    formats = {"ms_per_step": ".1f", "speedup": ".2f", "compile_s": ".0f", "break_even_updates": ",.0f",
               "run_saving": ".0%", "max_rel_grad_diff": ".1e"}  # fmt: skip
    parts.append(table(df, columns, formats))
    gain = float(df["speedup"].max())
    members, _ = load("replicates")
    if members is not None:
        gain *= float(members.loc[members["phase"] == "DPO training", "speedup_of_members"].max())
    parts.append(
        "\nNeither is used. A compiled forward changes every trained model's float order (so every cached run would be "
        "recomputed) for the saving above, and it compiles again when a batch's shape changes and in every new process. The flat "
        "buffer keeps the bits, but on an ensemble this size the optimizer's kernels were never the cost, and the extra "
        "pass over the gradients eats what it saves. "
        + (
            f"Replicates as members (the section above) and the faster of these two together buy {gain:.2f}× on "
            if members is not None
            else f"The faster of these two buys {gain:.2f}× on "
        )
        + "a training step, against the several times that ten seeds per trained claim in an hour would need on two "
        "cores (docs/timings.md): that budget needs a GPU.\n"
    )
    parts.append(source(path))
    return parts
