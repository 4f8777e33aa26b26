"""The Performance page on float order: the paper-profile verdicts under two float orders (decided on
intervals, then under the older rules), and the book on a GPU with its verdicts beside the CPU's."""

from __future__ import annotations

import pandas as pd

from benchmarks import common
from benchmarks.report_common import load, source, table


def float_order_verdicts() -> list[str]:
    """The section on the paper-profile verdicts under two float orders on one CPU, decided on intervals over
    replicates (claims_paper_default against claims_paper_perturbed), then the older comparison under the rules
    before intervals (claims_cpu_reference against claims_cpu)."""
    parts = ["## Float order and the verdicts\n"]
    default, default_path = load("claims_paper_default")
    perturbed, perturbed_path = load("claims_paper_perturbed")
    if default is None or perturbed is None:
        parts.append("Not measured yet under the interval rules: run the paper profile twice (`python -m "
                     "tools.bookbuild chapter … --profile paper`, once as is and once under `python -m "
                     "tools.float_order env all`), then `python -m benchmarks.gpu_book claims RESULTS --name "
                     "claims_paper_default` (and `_perturbed`).\n")  # fmt: skip
        return parts + float_order_before_intervals()
    both = default.merge(perturbed, on=["chapter", "claim_id"], suffixes=("_default", "_perturbed"))
    replicates = both[["n_default", "n_perturbed"]].apply(pd.to_numeric, errors="coerce")
    unlike = replicates.notna().all(axis=1) & (replicates["n_default"] != replicates["n_perturbed"])
    compared = both[~unlike]  # a claim re-measured on more replicates under one order only is not a float-order pair
    same = compared["verdict_default"] == compared["verdict_perturbed"]
    undecided = (compared[["verdict_default", "verdict_perturbed"]] == "inconclusive").any(axis=1)
    chapters = [c for c in common.stems() if c in set(both["chapter"])]
    parts.append(
        'Every verdict is decided on an interval over independent replicates (CONTRIBUTING, "What the stored '
        'outputs pin"), so a change of float order may move a verdict between a decisive one and *inconclusive*, '
        "never from one decisive verdict to another. Measured: the paper profile of "
        f"{', '.join(chapters)} run twice on one CPU from scratch, with this machine's own kernels on two threads, "
        "and under `python -m tools.float_order env all` (one thread, the vector unit capped below the CPU's, every "
        f"initial weight one ulp up). **{int(same.sum())} of the {len(compared)} verdicts are the same; "
        f"{int((~same & ~undecided).sum())} differ between two decisive verdicts.**"
        + _unlike_sentence(both[unlike])
        + " Every verdict under each:\n"
    )
    shown = both.assign(
        interval_default=lambda d: interval(d, "_default"), interval_perturbed=lambda d: interval(d, "_perturbed")
    )
    columns = {"chapter": "chapter", "claim_id": "claim", "verdict_default": "own kernels",
               "interval_default": "estimate [95 % CI] (n)", "verdict_perturbed": "perturbed",
               "interval_perturbed": "estimate [95 % CI] (n), perturbed", "threshold_default": "threshold"}  # fmt: skip
    if "commit_default" in shown:  # chapters re-measured after a change of their claims carry the commit of their code
        columns["commit_default"] = "code at"
        parts.append("Each chapter's two runs used the code of the commit in the last column.\n")
    parts.append(table(shown, columns, {}))
    parts.append(source(default_path) + "\n" + source(perturbed_path))
    return parts + float_order_before_intervals()


def _unlike_sentence(unlike: pd.DataFrame) -> str:
    """' Not compared: …' naming the claims whose two runs rest on different replicate counts ('' when none)."""
    if unlike.empty:
        return ""
    named = ", ".join(
        f"{r.claim_id} ({int(float(r.n_default))} seeds under the own kernels, {int(float(r.n_perturbed))} perturbed)"
        for r in unlike.itertuples()
    )
    return f" Not compared, since their runs rest on different numbers of replicates: {named}."


def interval(claims: pd.DataFrame, suffix: str) -> list[str]:
    """'estimate [low, high] (n)' of each claim, '' for an exact one (no replicates)."""
    numbers = claims[[f"{c}{suffix}" for c in ("estimate", "ci_low", "ci_high", "n")]].apply(pd.to_numeric, errors="coerce")
    return [
        "" if pd.isna(n) else f"{estimate:.3g} [{low:.3g}, {high:.3g}] ({int(n)})"
        for estimate, low, high, n in numbers.itertuples(index=False)
    ]


def float_order_before_intervals() -> list[str]:
    """The paper-profile verdicts under the reference kernel path against the machine's fastest kernels, under the
    rules before intervals (claims_cpu_reference against claims_cpu)."""
    parts = ["### Before intervals: single runs against fixed thresholds\n"]
    other, other_path = load("claims_cpu_reference")
    cpu, cpu_path = load("claims_cpu")
    if other is None or cpu is None:
        parts.append("Not measured.\n")
        return parts
    both = other.merge(cpu, on=["chapter", "claim_id"], suffixes=("_reference", "_cpu"))
    same = both["verdict_reference"] == both["verdict_cpu"]
    chapters = [c for c in common.stems() if c in set(both["chapter"])]
    covered = "" if len(chapters) == len(common.stems()) else f" (the chapters that ran: {', '.join(chapters)})"
    parts.append(
        "Under the rules before intervals (verdicts read on one to three runs against fixed thresholds, measured on "
        "an Intel Xeon on 2026-12-01), the paper-profile book under the reference kernel path (AVX2 kernels, MKL's "
        "CNR mode, oneDNN off; same code and seeds) against the machine's fastest kernels: "
        f"**{int(same.sum())} of the {len(both)} verdicts were the same**{covered}."
        + (" The claims whose verdicts differed:\n" if (~same).any() else "\n")
    )
    if (~same).any():
        parts.append(table(both[~same], {"chapter": "chapter", "claim_id": "claim", "verdict_cpu": "fastest kernels",
                                         "verdict_reference": "reference path", "our_value_cpu": "value",
                                         "our_value_reference": "value, reference path"}, {}))  # fmt: skip
    parts.append(source(other_path) + "\n" + source(cpu_path))
    return parts


def gpu_time(wall_s: float, outcome: str) -> str:
    """A GPU row's time: the chapter's own for one that ran, else a lower bound or the failure."""
    if outcome == "ran":
        return f"{wall_s:.0f}"
    return f"> {wall_s:.0f} (stopped)" if outcome.startswith("stopped") else f"{outcome} after {wall_s:.0f}"


def _gpu_opening(runs: pd.DataFrame) -> str:
    """The opening sentence's GPU clause: how many of the book's chapters finished on the GPU, and in how long."""
    gpu, chapters = runs["gpu"].iloc[0], runs[runs["chapter"].isin(common.stems())]
    finished = chapters[chapters["outcome"] == "ran"]
    opening = (f"on one {gpu}, {len(finished)} of {len(chapters)} chapters finished, in at most "
               f"{finished['wall_s'].max() / 60:.1f} min each with the chapters sharing the GPU at once")  # fmt: skip
    if len(finished) < len(chapters):
        stopped = chapters[chapters["outcome"] != "ran"]
        low, high = stopped["wall_s"].min() / 60, stopped["wall_s"].max() / 60
        opening += f", and {len(stopped)} did not finish within {low:.1f}–{high:.1f} min"
    return opening


GPU_COLUMNS = {
    "run": "run",
    "label": "chapter",
    "cpu_s": "2-core CPU (s)",
    "gpu_s": "GPU (s)",
    "processes_sharing_gpu": "chapters sharing the GPU",
    "gpu_busy_mean": "GPU busy",
    "gpu_memory_peak_mib": "GPU memory peak (MiB)",
}


def _gpu_table(runs: pd.DataFrame, profile: pd.DataFrame | None) -> str:
    """Each chapter's time on the GPU beside its paper-profile time on the CPU (profile.csv), and the GPU's use."""
    cpu = {}
    if profile is not None:
        paper = profile[(profile["profile"] == "paper") & (profile.get("device", "cpu") == "cpu")]
        cpu = paper.groupby("chapter")["chapter_s"].first().to_dict()
    shown = runs.assign(cpu_s=runs["chapter"].map(cpu))
    shown["gpu_s"] = [gpu_time(w, o) for w, o in zip(shown["wall_s"], shown["outcome"], strict=True)]
    shown["label"] = shown["chapter"].replace({"drift_map_large": "drift_map, 10 seeds, S = [100, 600]"})
    return table(shown, GPU_COLUMNS, {"cpu_s": ",.0f", "gpu_busy_mean": ".0%", "gpu_memory_peak_mib": ",.0f"})


def _gpu_verdicts() -> list[str]:
    """The paragraph and table on the verdicts on the GPU against the CPU's (claims_gpu, claims_cpu); [] without them."""
    gpu_claims, gpu_path = load("claims_gpu")
    cpu_claims, cpu_path = load("claims_cpu")
    if gpu_claims is None or cpu_claims is None:
        return []
    both = gpu_claims.merge(cpu_claims, on=["chapter", "claim_id"], suffixes=("_gpu", "_cpu"))
    same = both["verdict_gpu"] == both["verdict_cpu"]
    parts = [
        f"**Verdicts on the GPU against the CPU.** Of the {len(both)} claims of the chapters that finished on the GPU, "
        f"{int(same.sum())} got the same verdict as the paper-profile run on the CPU. The GPU's kernels add and "
        "multiply in another order, so a run is a different float path from the same seed, and training trajectories "
        "part. Where a verdict hinges on whether some seed drifts out of distribution, it can then fall either way: "
        "under the paper's recipe drift is a knife-edge event (in the runs recorded here the KL sweep's seed 0 ended at "
        "63 % OOD, mean over β, on the CPU and at 9 % on the GPU; the drift map chapter maps where drift is robust). The "
        "claims whose verdicts differ, with both measured values:\n"
    ]
    differ = both[~same]
    if len(differ):
        parts.append(table(differ, {"chapter": "chapter", "claim_id": "claim", "verdict_cpu": "CPU", "verdict_gpu": "GPU",
                                    "our_value_cpu": "CPU value", "our_value_gpu": "GPU value"}, {}))  # fmt: skip
    parts.append(source(gpu_path) + "\n" + source(cpu_path))
    return parts


def gpu_book(profile: pd.DataFrame | None) -> tuple[str, list[str]]:
    """(the opening sentence's GPU clause, the section on the paper-profile book on a GPU and its verdicts)."""
    runs, path = load("gpu_book")
    if runs is None:
        return "", [
            "## The book on a GPU\n",
            "No GPU was available where these numbers were taken. On a machine with CUDA, `bash benchmarks/gpu_book.sh "
            "OUTDIR`, then `python -m benchmarks.gpu_book collect OUTDIR`, add this section.\n",
        ]
    gpu = runs["gpu"].iloc[0]
    parts = [
        "## The book on a GPU\n",
        f'`bash benchmarks/gpu_book.sh OUTDIR` runs every chapter at the paper profile with `device="cuda"` on one {gpu} '
        f"(torch {runs['torch'].iloc[0]}): all chapters at once, one process per chapter with 2 CPU threads, sharing the "
        "GPU, so each time below is an upper bound on the chapter's time alone; then `python -m benchmarks.gpu_book "
        "collect OUTDIR` writes these tables. Before the chapters it runs `tests/test_cuda.py`: a small SFT-then-DPO run, "
        "greedy answers and exact response masses on the GPU against the same on the CPU (they agreed). A ninth process "
        "ran the drift map at a larger scale than its paper profile. Each process had a time budget; a chapter that "
        "reached it was stopped and is listed as such.\n",
        _gpu_table(runs, profile),
        source(path),
        "**Why the GPU does not win here.** The book's models are tiny (one layer, d 128, sequences of about 9 "
        "tokens), so each kernel does microseconds of work and a training step costs about what launching its few "
        f"hundred kernels costs. The chapters sharing one GPU take turns on it: it was busy {runs['gpu_busy_mean'].max():.0%} "
        f"of the time while using at most {runs['gpu_memory_peak_mib'].max() / 1024:.0f} GiB of its memory. The chapters "
        "that train many small models one after another (the likelihood-displacement map's single-prompt runs, CHES's "
        "single-pair runs, the drift map's SFT references) did not finish within their budgets; the batched ensembles "
        "(grokking's β at once) gained most. A GPU pays off at larger models or more members per ensemble (the sweep "
        "benchmark below), not at this book's scale.\n",
    ]
    return _gpu_opening(runs), parts + _gpu_verdicts()
