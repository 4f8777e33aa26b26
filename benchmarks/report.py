"""Render the book's Performance page from the benchmark CSVs.

    python -m benchmarks.report --executed _build/executed

Reads each CSV from ``_build/benchmarks/`` when this machine has run the suite, else the
committed reference measurements in ``benchmarks/results/``, and writes
``<executed>/performance.md`` with its figures in ``<executed>/performance/``. A missing
CSV leaves its section saying so. Needs only the toolkit's own dependencies.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from benchmarks.common import stems

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "_build" / "benchmarks", ROOT / "benchmarks" / "results")
MACHINE = ["cpu", "cores", "threads", "torch"]
TARGETS = {"one model vs TRL": 5.0, "sweep vs TRL": 10.0, "sweep vs plain loop": 10.0, "fraction of peak": 0.50}
# Issue 20's wall-time targets (minutes, at most), judged on book.csv's from-scratch runs
TIME_GOALS = {"paper": 15.0, "quick": 2.0}


REQUIRED = {
    "throughput": {"method", "steps", "pairs_per_s", "best_s", "vs_trl"},
    "sweep_speed": {"method", "steps", "betas_timed", "seconds_30_betas", "pair_updates_per_s", "batched_speedup",
                    "mflop_per_pair_update", "gflops", "peak_gflops", "fraction_of_peak"},
    "sweep_speed_gpu": {"method", "steps", "pair_updates_per_s", "fraction_of_peak", "device"},
    "peak": {"shape", "gflops", "fraction_of_peak"},
    "eval_speed": {"part", "seconds", "gflop", "gflops", "peak_gflops", "fraction_of_peak", "models", "test_prompts",
                   "kl_samples"},
    "scaling": {"axis", "size", "seconds", "pair_updates_per_s"},
    "book": {"source", "profile", "chapter", "wall_s", "peak_rss_mib"},
    "profile": {"chapter", "profile", "category", "seconds", "chapter_s"},
    "profile_baseline": {"chapter", "profile", "category", "seconds", "chapter_s", "commit", "source"},
    "profile_claims": {"chapter", "profile", "claim_id", "verdict", "our_value"},
    "profile_baseline_claims": {"chapter", "profile", "claim_id", "verdict", "our_value", "commit"},
    "gpu_book": {"run", "chapter", "outcome", "wall_s", "processes_sharing_gpu", "gpu_busy_mean", "gpu_memory_peak_mib",
                 "gpu", "torch"},
    "profile_gpu": {"chapter", "profile", "category", "seconds", "chapter_s", "device"},
    "profile_flops": {"chapter", "profile", "category", "gflop"},
    "step_anatomy": {"way", "forward_backward_s", "same_bits", "max_rel_grad_diff", "compile_s", "speedup",
                     "full_step_s", "models", "batch"},
    "step_ops": {"group", "seconds_per_step", "share"},
    "claims_gpu": {"chapter", "claim_id", "verdict", "our_value"},
    "claims_cpu": {"chapter", "claim_id", "verdict", "our_value"},
    "claims_cpu_reference": {"chapter", "claim_id", "verdict", "our_value"},
    "claims_paper_default": {"chapter", "claim_id", "verdict", "n", "estimate", "ci_low", "ci_high", "threshold"},
    "claims_paper_perturbed": {"chapter", "claim_id", "verdict", "n", "estimate", "ci_low", "ci_high", "threshold"},
}  # fmt: skip
# tables whose rows carry no CPU/thread columns
NO_MACHINE = {"book", "gpu_book", "claims_gpu", "claims_cpu", "claims_cpu_reference", "claims_paper_default",
              "claims_paper_perturbed"}  # fmt: skip


def load(name: str) -> tuple[pd.DataFrame | None, Path | None]:
    """The first CSV called name found in SOURCES; a file lacking the columns this page needs raises ValueError naming it."""
    for folder in SOURCES:
        path = folder / f"{name}.csv"
        if path.exists():
            df = pd.read_csv(path)
            missing = (
                REQUIRED[name] - set(df.columns) if name in NO_MACHINE else (REQUIRED[name] | set(MACHINE)) - set(df.columns)
            )
            if missing or df.empty:
                raise ValueError(f"{path}: lacks columns {sorted(missing)} or rows; re-run `python -m benchmarks.{name}`")
            return df, path
    return None, None


def _table(df: pd.DataFrame, columns: dict[str, str], formats: dict[str, str]) -> str:
    shown = df[list(columns)].rename(columns=columns)
    for column, fmt in formats.items():
        shown[columns[column]] = df[column].map(lambda x, fmt=fmt: "" if pd.isna(x) else format(x, fmt))
    header = "| " + " | ".join(shown.columns) + " |\n| " + " | ".join("---" for _ in shown.columns) + " |\n"
    return header + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)) + "\n"


def _source(path: Path | None) -> str:
    if path is None:
        return ""
    where = "this machine's run" if path.parent == SOURCES[0] else "the reference measurements committed with the book"
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"*Source: `{shown}` ({where}).*\n"


def _machine(df: pd.DataFrame) -> str:
    row = df.iloc[0]
    return f"{row['cpu']}, {row['cores']} cores, torch {row['torch']} on {row['threads']} threads"


def _verdict(value: float, target: float) -> str:
    return f"**met** ({value:.2f} ≥ {target:g})" if value >= target else f"**not met** ({value:.2f} < {target:g})"


def _time_verdict(minutes: float, goal: float) -> str:
    return f"**met** ({minutes:.1f} ≤ {goal:g})" if minutes <= goal else f"**not met** ({minutes:.1f} > {goal:g})"


def _time_targets() -> list[str]:
    """Rows of the targets table for the whole book's wall time: the fastest from-scratch run of each
    profile in book.csv (its chapters, run by `benchmarks.book --run`; the site build is not included)."""
    book, _ = load("book")
    if book is None:
        return []
    runs = book[(book["chapter"] == "all chapters") & book["source"].str.contains("--jobs", regex=False)]
    rows = []
    for profile in ("paper", "quick"):
        walls = runs.loc[runs["profile"] == profile, "wall_s"]
        if len(walls):
            name = f"{profile} book from scratch, its chapters (min)"
            rows.append(f"| {name} | ≤ {TIME_GOALS[profile]:g} | {_time_verdict(walls.min() / 60, TIME_GOALS[profile])} |")
    return rows


def _save(fig: plt.Figure, path: Path) -> None:
    """Save as PNG, leaving an identical file untouched (so that an unchanged page is not re-rendered)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    if not path.exists() or path.read_bytes() != buffer.getvalue():
        path.write_bytes(buffer.getvalue())


def _chapter_seconds(profile: pd.DataFrame) -> pd.DataFrame:
    """One row per (profile, chapter) in the book's order: the chapter's in-process wall time."""
    return profile.groupby(["profile", "chapter"], sort=False)["chapter_s"].first().reset_index()


def _book_walls(cpu: str) -> tuple[str, str]:
    """From book.csv's from-scratch whole-book runs: the quotable sentence on the paper profile's
    `make book` wall time ('' without such a run), and one on every run's wall time ('' without any)."""
    book, _ = load("book")
    if book is None:
        return "", ""
    runs = book[(book["chapter"] == "all chapters") & book["source"].str.contains("--jobs", regex=False)]
    said, lead = [], ""
    for profile, group in sorted(runs.groupby("profile"), key=lambda item: item[0] != "paper"):
        how = [(row["source"].split(", ", 1)[1].split(" (")[0], row["wall_s"] / 60) for _, row in group.iterrows()]
        said.append(f"{profile} profile " + ", ".join(f"{minutes:.1f} min ({what})" for what, minutes in how))
        if profile == "paper":
            what, minutes = min(how, key=lambda item: item[1])
            lead = f"**The whole book at paper scale: {minutes:.0f} min on a {cpu}** (`make book` from scratch, {what}).\n\n"
    return lead, (f"`make book` from scratch, wall time: {'; '.join(said)}. " if said else "")


def _time_breakdown() -> tuple[str, list[str]]:
    """The page's opening sentence, and the sections on where each chapter's time goes and the times before and after."""
    profile, path = load("profile")
    baseline, baseline_path = load("profile_baseline")
    if profile is None:
        return "", ["## Where the time goes\n", "Not measured yet: run `python -m benchmarks.profile`.\n"]
    chapters = _chapter_seconds(profile)
    expected = len(stems()) or chapters["chapter"].nunique()
    said = []
    by_profile = dict(list(chapters.groupby("profile", sort=False)))
    for name in sorted(by_profile, key=lambda n: n != "paper"):  # the paper profile first: the number readers quote
        group = by_profile[name]
        if len(group) >= expected:
            said.append(f"{group['chapter_s'].sum() / 60:.1f} min at the {name} profile")
        else:  # never a total over some chapters only
            said.append(f"at the {name} profile {len(group)} of {expected} chapters measured so far")
    opening = "; ".join(said)
    first = profile.iloc[0]
    lead, walls = _book_walls(f"{first['cores']}-core {first['cpu']}")
    opening = lead + (
        f"**The whole book's computation from scratch: {opening}, on {_machine(profile)}** "
        "(chapters run one after another in one process by `python -m benchmarks.profile`; a `make book` run adds "
        f"about 7 s per chapter for starting the kernel, importing and rendering figures). {walls}No GPU was "
        "lent where these numbers were taken.\n"
    )
    parts = [
        "## Where the time goes\n",
        "`benchmarks/profile.py` executes each chapter's notebook source with the profile's parameters and fresh "
        "caches, and times the toolkit's entry points: the exclusive wall time of training loops (evaluation "
        "excluded), greedy decoding, sampling for the KL estimate, scoring those samples (KL), the rest of "
        "evaluation (test-pair log-probs, metrics), exact enumeration of response masses, the vanishing-gradients "
        "chapter's exact per-input gradients, plotting, and file I/O; `other` is everything else.\n",
    ]
    for name, frame in profile.groupby("profile", sort=False):
        table = frame.pivot_table(index="chapter", columns="category", values="seconds", sort=False).fillna(0.0)
        table = table.loc[:, table.sum() > 0.05]
        table["total"] = frame.groupby("chapter", sort=False)["chapter_s"].first()
        shown = table.reset_index()
        parts.append(f"Seconds per category, {name} profile:\n")
        parts.append(_table(shown, {c: c for c in shown.columns}, {c: ".1f" for c in shown.columns if c != "chapter"}))
    parts.append(_source(path))
    if baseline is not None:
        parts += _before_after(baseline, baseline_path, profile)
    return opening, parts


def compare_work(before: pd.DataFrame | None, after: pd.DataFrame | None) -> str:
    """Whether two profiled runs of one chapter computed the same thing, from the claims each
    wrote (rows claim_id, verdict, our_value): 'same claims' (every verdict and value); 'same claims and
    verdicts, k of n values differ'; 'same claims, k of n verdicts differ';
    or which claims one run has and the other lacks ('more work now: + C4-drift'); 'not recorded'
    when either run kept no claims."""
    if before is None or after is None or before.empty or after.empty:
        return "not recorded"
    old, new = before.set_index("claim_id"), after.set_index("claim_id")
    added, dropped = [c for c in new.index if c not in old.index], [c for c in old.index if c not in new.index]
    if added or dropped:
        said = (["more work now: + " + ", ".join(added)] if added else []) + (["− " + ", ".join(dropped)] if dropped else [])
        return "; ".join(said)
    new = new.loc[old.index]
    verdicts = int((old["verdict"].astype(str) != new["verdict"].astype(str)).sum())
    values = int((old["our_value"].astype(str) != new["our_value"].astype(str)).sum())
    if verdicts:
        return f"same claims, {verdicts} of {len(old)} verdicts differ"
    return "same claims" if values == 0 else f"same claims and verdicts, {values} of {len(old)} values differ"


def _unmeasured(before: pd.DataFrame, after: pd.DataFrame, profile_name: str) -> str:
    """'; no time before for X, Y' when chapters timed now at this profile have no time at the baseline."""
    missing = sorted(
        set(after.loc[after["profile"] == profile_name, "chapter"])
        - set(before.loc[before["profile"] == profile_name, "chapter"])
    )
    return f"; no time before for {', '.join(missing)}" if missing else ""


def _before_after(baseline: pd.DataFrame, baseline_path: Path | None, profile: pd.DataFrame) -> list[str]:
    """The before/after table: each chapter's in-process time at the baseline commit and now, and
    whether the two runs computed the same claims. Only a chapter with the same claims shows a
    speed-up; totals are over those chapters, so that work added since is never counted as slowness."""
    before = _chapter_seconds(baseline).rename(columns={"chapter_s": "before"})
    after = _chapter_seconds(profile).rename(columns={"chapter_s": "after"})
    both = before.merge(after, on=["profile", "chapter"])
    if both.empty:
        return []
    claims_before, _ = load("profile_baseline_claims")
    claims_after, _ = load("profile_claims")

    def claims_of(table: pd.DataFrame | None, profile_name: str, chapter: str) -> pd.DataFrame | None:
        if table is None:
            return None
        rows = table[(table["profile"] == profile_name) & (table["chapter"] == chapter)]
        return rows if len(rows) else None

    both["work"] = [
        compare_work(claims_of(claims_before, p, c), claims_of(claims_after, p, c))
        for p, c in zip(both["profile"], both["chapter"], strict=True)
    ]
    same = both["work"].str.startswith("same claims")
    both["speedup"] = (both["before"] / both["after"]).where(same)
    totals = []
    for name, group in both.groupby("profile", sort=False):
        kept = group[same[group.index]]
        if len(kept):
            n, timed_now = len(kept), set(after.loc[after["profile"] == name, "chapter"])
            label = (
                "all chapters" if set(kept["chapter"]) == timed_now else f"the {n} chapter{'s' * (n > 1)} with the same claims"
            )
            totals.append({"profile": name, "chapter": label, "before": kept["before"].sum(), "after": kept["after"].sum(),
                           "work": "", "speedup": kept["before"].sum() / kept["after"].sum()})  # fmt: skip
    both = pd.concat([both, pd.DataFrame(totals)], ignore_index=True)
    sources = baseline.groupby("profile", sort=False)["source"].first()
    columns = {"profile": "profile", "chapter": "chapter", "before": "before (s)", "after": "after (s)", "speedup": "×",
               "work": "what the two runs computed"}  # fmt: skip
    parts = [
        "Before and after the speed-ups of issue 20: each chapter's in-process time (as above) at the commit before "
        "them and now. A chapter's two runs are compared by the claims each computed: a speed-up (×) is shown only "
        "where both answered the same claims, since a chapter that gained claims since (a drifting arm, a map) does "
        "more work now. *Before* was measured as follows:\n",
        "".join(f"- {p}: {sources[p]}{_unmeasured(before, after, p)}\n" for p in both["profile"].unique()) + "\n",
        _table(both, columns, {"before": ".1f", "after": ".1f", "speedup": ".2f"}),
        _source(baseline_path),
    ]
    return parts


def _flops_by_category() -> list[str]:
    """The section on the chapters' FLOPs (profile_flops.csv, counted) over their uncounted times (profile.csv)
    against the measured matmul peak (peak.csv), by category and by chapter."""
    parts = ["## The chapters against the limit\n"]
    counted, counted_path = load("profile_flops")
    timed, _ = load("profile")
    peak, _ = load("peak")
    if counted is None or timed is None or peak is None:
        parts.append("Not measured yet: run `python -m benchmarks.profile --flops --profile quick` (and the uncounted "
                     "`benchmarks.profile` and `benchmarks.peak`).\n")  # fmt: skip
        return parts
    keys = ["chapter", "profile", "category"]
    both = counted[[*keys, "gflop"]].merge(timed[[*keys, "seconds"]], on=keys)
    peak_gflops = float(peak["gflops"].max())
    for profile, frame in both.groupby("profile", sort=False):
        chapters = frame["chapter"].nunique()
        gflop, seconds = frame["gflop"].sum(), frame["seconds"].sum()
        parts.append(
            f"Every floating-point operation the {chapters} chapters compute at the {profile} profile, counted by torch's "
            "FlopCounterMode around the whole chapter (`python -m benchmarks.profile --flops`; matmuls and attention, "
            "which is where torch counts FLOPs) and attributed to the same categories as the time above, divided by "
            f"that time (from the uncounted run: the counter slows small operations down). **{gflop:,.0f} GFLOP in "
            f"{seconds:,.0f} s: {gflop / seconds:.1f} GFLOP/s, {gflop / seconds / peak_gflops:.0%} of this machine's "
            f"measured peak of {peak_gflops:.0f} GFLOP/s.** At the peak they would take {gflop / peak_gflops:,.0f} s; "
            "the rest of the time is work torch does not count as FLOPs (elementwise operations, softmax, LayerNorm, "
            "the optimizer, indexing) and Python.\n"
        )
        for by, label in (("category", "category"), ("chapter", "chapter")):
            table = frame.groupby(by, sort=False)[["gflop", "seconds"]].sum().reset_index()
            if by == "chapter":  # in the book's order
                table = table.sort_values("chapter", key=lambda c: c.map({s: i for i, s in enumerate(stems())}))
            table = table[(table["gflop"] > 0) | (table["seconds"] >= 0.5)]
            table["gflops"] = table["gflop"] / table["seconds"]
            table["of_peak"] = table["gflops"] / peak_gflops
            parts.append(f"By {label}, {profile} profile:\n")
            parts.append(_table(table, {by: label, "gflop": "GFLOP", "seconds": "seconds", "gflops": "GFLOP/s",
                                        "of_peak": "of peak"},
                                {"gflop": ",.1f", "seconds": ",.1f", "gflops": ".1f", "of_peak": ".0%"}))  # fmt: skip
    parts.append(_source(counted_path))
    return parts


def _step_anatomy() -> list[str]:
    """The section on one 30-β training step, op by op, and the ways of cutting it (step_anatomy, step_ops)."""
    parts = ["## One training step, op by op\n"]
    anatomy, path = load("step_anatomy")
    groups, _ = load("step_ops")
    if anatomy is None or groups is None:
        parts.append("Not measured yet: run `python -m benchmarks.step_anatomy`.\n")
        return parts
    first = anatomy.iloc[0]
    parts.append(
        f"Machine: {_machine(anatomy)}. One step of the sweep above ({int(first['models'])} models, batch "
        f"{int(first['batch'])}, DPO loss, backward, RMSprop) takes {first['full_step_s'] * 1e3:.1f} ms. torch's "
        "profiler splits its ops' own CPU time into four groups:\n"
    )
    shown = groups.assign(ms=groups["seconds_per_step"] * 1e3)
    parts.append(_table(shown, {"group": "ops", "ms": "ms per step", "share": "share"}, {"ms": ".1f", "share": ".0%"}))
    sweep, _ = load("sweep_speed")
    matmul_s = float(groups.loc[groups["group"] == "matmuls", "seconds_per_step"].sum())
    if sweep is not None and matmul_s > 0:
        row = sweep.iloc[0]
        step_gflop = row["mflop_per_pair_update"] * first["models"] * first["batch"] / 1e3
        ceiling = groups["seconds_per_step"].sum() / matmul_s
        parts.append(
            f"\nThe step's {step_gflop:.2f} GFLOP (the sweep's count above) take {matmul_s * 1e3:.1f} ms of matmuls: "
            f"{step_gflop / matmul_s:.0f} GFLOP/s, {step_gflop / matmul_s / row['peak_gflops']:.0%} of the peak measured "
            f"with the sweep. If every other op cost nothing, the step would be {ceiling:.1f}× faster: the ceiling of "
            "any fusion at these shapes in float32, short of computing fewer FLOPs.\n"
        )
    parts.append(
        "\nThree ways of cutting it, measured on the step's forward and backward, alternating, in one run:\n\n"
        "- the same forward written without `vmap` (`benchmarks.step_anatomy.stacked_logits`): it runs the same ops, "
        "so its gradients are the same bits, and what it saves is `vmap`'s own dispatch;\n"
        "- that forward under `torch.compile`, which fuses the elementwise work into C++ loops;\n"
        "- the prompt computed once per pair (its 4 tokens, then chosen and rejected continuing its attention cache: "
        "12 positions per pair instead of 16).\n\n"
        "The last two add in another order, so their gradients, and every trained model of the book with them, differ "
        "in the last bits; the book's verdicts would have to be re-established (on a GPU, float order alone changed "
        "some of them: see the GPU section).\n"
    )
    shown = anatomy.assign(ms=anatomy["forward_backward_s"] * 1e3, bits=anatomy["same_bits"].map({True: "yes", False: "no"}))
    parts.append(_table(shown, {"way": "forward and backward", "ms": "ms per step", "speedup": "speed-up",
                                "bits": "same bits", "max_rel_grad_diff": "largest gradient difference (relative)",
                                "compile_s": "compile (s)"},
                        {"ms": ".1f", "speedup": ".2f", "max_rel_grad_diff": ".1e", "compile_s": ".0f"}))  # fmt: skip
    parts.append(_source(path))
    return parts


def _float_order_verdicts() -> list[str]:
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
    else:
        both = default.merge(perturbed, on=["chapter", "claim_id"], suffixes=("_default", "_perturbed"))
        same = both["verdict_default"] == both["verdict_perturbed"]
        undecided = (both[["verdict_default", "verdict_perturbed"]] == "inconclusive").any(axis=1)
        chapters = [c for c in stems() if c in set(both["chapter"])]
        parts.append(
            'Every verdict is decided on an interval over independent replicates (CONTRIBUTING, "What the stored '
            'outputs pin"), so a change of float order may move a verdict between a decisive one and *inconclusive*, '
            "never from one decisive verdict to another. Measured: the paper profile of "
            f"{', '.join(chapters)} run twice on one CPU from scratch, with this machine's own kernels on two threads, "
            "and under `python -m tools.float_order env all` (one thread, the vector unit capped below the CPU's, every "
            f"initial weight one ulp up). **{int(same.sum())} of the {len(both)} verdicts are the same; "
            f"{int((~same & ~undecided).sum())} differ between two decisive verdicts.** Every verdict under each:\n"
        )
        table = both.assign(
            interval_default=lambda d: _interval(d, "_default"), interval_perturbed=lambda d: _interval(d, "_perturbed")
        )
        parts.append(_table(table, {"chapter": "chapter", "claim_id": "claim", "verdict_default": "own kernels",
                                    "interval_default": "estimate [95 % CI] (n)", "verdict_perturbed": "perturbed",
                                    "interval_perturbed": "estimate [95 % CI] (n), perturbed", "threshold_default":
                                    "threshold"}, {}))  # fmt: skip
        parts.append(_source(default_path) + "\n" + _source(perturbed_path))
    parts += _float_order_before_intervals()
    return parts


def _interval(claims: pd.DataFrame, suffix: str) -> list[str]:
    """'estimate [low, high] (n)' of each claim, '' for an exact one (no replicates)."""
    numbers = claims[[f"{c}{suffix}" for c in ("estimate", "ci_low", "ci_high", "n")]].apply(pd.to_numeric, errors="coerce")
    return [
        "" if pd.isna(n) else f"{estimate:.3g} [{low:.3g}, {high:.3g}] ({int(n)})"
        for estimate, low, high, n in numbers.itertuples(index=False)
    ]


def _float_order_before_intervals() -> list[str]:
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
    chapters = [c for c in stems() if c in set(both["chapter"])]
    covered = "" if len(chapters) == len(stems()) else f" (the chapters that ran: {', '.join(chapters)})"
    parts.append(
        "Under the rules before intervals (verdicts read on one to three runs against fixed thresholds, measured on "
        "an Intel Xeon on 2026-12-01), the paper-profile book under the reference kernel path (AVX2 kernels, MKL's "
        "CNR mode, oneDNN off; same code and seeds) against the machine's fastest kernels: "
        f"**{int(same.sum())} of the {len(both)} verdicts were the same**{covered}."
        + (" The claims whose verdicts differed:\n" if (~same).any() else "\n")
    )
    if (~same).any():
        parts.append(_table(both[~same], {"chapter": "chapter", "claim_id": "claim", "verdict_cpu": "fastest kernels",
                                          "verdict_reference": "reference path", "our_value_cpu": "value",
                                          "our_value_reference": "value, reference path"}, {}))  # fmt: skip
    parts.append(_source(other_path) + "\n" + _source(cpu_path))
    return parts


def _gpu_time(wall_s: float, outcome: str) -> str:
    """A GPU row's time: the chapter's own for one that ran, else a lower bound or the failure."""
    if outcome == "ran":
        return f"{wall_s:.0f}"
    return f"> {wall_s:.0f} (stopped)" if outcome.startswith("stopped") else f"{outcome} after {wall_s:.0f}"


def _gpu_book(profile: pd.DataFrame | None) -> tuple[str, list[str]]:
    """(the opening sentence's GPU clause, the section on the paper-profile book on a GPU and its verdicts)."""
    runs, path = load("gpu_book")
    if runs is None:
        return "", [
            "## The book on a GPU\n",
            "No GPU was available where these numbers were taken. On a machine with CUDA, `bash benchmarks/gpu_book.sh "
            "OUTDIR`, then `python -m benchmarks.gpu_book collect OUTDIR`, add this section.\n",
        ]
    gpu, chapters = runs["gpu"].iloc[0], runs[runs["chapter"].isin(stems())]
    finished = chapters[chapters["outcome"] == "ran"]
    opening = (f"on one {gpu}, {len(finished)} of {len(chapters)} chapters finished, in at most "
               f"{finished['wall_s'].max() / 60:.1f} min each with the chapters sharing the GPU at once")  # fmt: skip
    if len(finished) < len(chapters):
        stopped = chapters[chapters["outcome"] != "ran"]
        low, high = stopped["wall_s"].min() / 60, stopped["wall_s"].max() / 60
        opening += f", and {len(stopped)} did not finish within {low:.1f}–{high:.1f} min"
    cpu = {}
    if profile is not None:
        paper = profile[(profile["profile"] == "paper") & (profile.get("device", "cpu") == "cpu")]
        cpu = paper.groupby("chapter")["chapter_s"].first().to_dict()
    table = runs.assign(cpu_s=runs["chapter"].map(cpu))
    table["gpu_s"] = [_gpu_time(w, o) for w, o in zip(table["wall_s"], table["outcome"], strict=True)]
    table["label"] = table["chapter"].replace({"drift_map_large": "drift_map, 10 seeds, S = [100, 600]"})
    parts = [
        "## The book on a GPU\n",
        f'`bash benchmarks/gpu_book.sh OUTDIR` runs every chapter at the paper profile with `device="cuda"` on one {gpu} '
        f"(torch {runs['torch'].iloc[0]}): all chapters at once, one process per chapter with 2 CPU threads, sharing the "
        "GPU, so each time below is an upper bound on the chapter's time alone; then `python -m benchmarks.gpu_book "
        "collect OUTDIR` writes these tables. Before the chapters it runs `tests/test_cuda.py`: a small SFT-then-DPO run, "
        "greedy answers and exact response masses on the GPU against the same on the CPU (they agreed). A ninth process "
        "ran the drift map at a larger scale than its paper profile. Each process had a time budget; a chapter that "
        "reached it was stopped and is listed as such.\n",
        _table(
            table,
            {
                "run": "run",
                "label": "chapter",
                "cpu_s": "2-core CPU (s)",
                "gpu_s": "GPU (s)",
                "processes_sharing_gpu": "chapters sharing the GPU",
                "gpu_busy_mean": "GPU busy",
                "gpu_memory_peak_mib": "GPU memory peak (MiB)",
            },
            {"cpu_s": ",.0f", "gpu_busy_mean": ".0%", "gpu_memory_peak_mib": ",.0f"},
        ),
        _source(path),
        "**Why the GPU does not win here.** The book's models are tiny (one layer, d 128, sequences of about 9 "
        "tokens), so each kernel does microseconds of work and a training step costs about what launching its few "
        f"hundred kernels costs. The chapters sharing one GPU take turns on it: it was busy {runs['gpu_busy_mean'].max():.0%} "
        f"of the time while using at most {runs['gpu_memory_peak_mib'].max() / 1024:.0f} GiB of its memory. The chapters "
        "that train many small models one after another (the likelihood-displacement map's single-prompt runs, CHES's "
        "single-pair runs, the drift map's SFT references) did not finish within their budgets; the batched ensembles "
        "(grokking's β at once) gained most. A GPU pays off at larger models or more members per ensemble (the sweep "
        "benchmark below), not at this book's scale.\n",
    ]
    gpu_claims, gpu_path = load("claims_gpu")
    cpu_claims, cpu_path = load("claims_cpu")
    if gpu_claims is not None and cpu_claims is not None:
        both = gpu_claims.merge(cpu_claims, on=["chapter", "claim_id"], suffixes=("_gpu", "_cpu"))
        same = both["verdict_gpu"] == both["verdict_cpu"]
        parts.append(
            f"**Verdicts on the GPU against the CPU.** Of the {len(both)} claims of the chapters that finished on the GPU, "
            f"{int(same.sum())} got the same verdict as the paper-profile run on the CPU. The GPU's kernels add and "
            "multiply in another order, so a run is a different float path from the same seed, and training trajectories "
            "part. Where a verdict hinges on whether some seed drifts out of distribution, it can then fall either way: "
            "under the paper's recipe drift is a knife-edge event (in the runs recorded here the KL sweep's seed 0 ended at "
            "63 % OOD, mean over β, on the CPU and at 9 % on the GPU; the drift map chapter maps where drift is robust). The "
            "claims whose verdicts differ, with both measured values:\n"
        )
        differ = both[~same]
        if len(differ):
            parts.append(_table(differ, {"chapter": "chapter", "claim_id": "claim", "verdict_cpu": "CPU", "verdict_gpu": "GPU",
                                         "our_value_cpu": "CPU value", "our_value_gpu": "GPU value"}, {}))  # fmt: skip
        parts.append(_source(gpu_path) + "\n" + _source(cpu_path))
    return opening, parts


def render(executed: Path) -> Path:
    figures = executed / "performance"
    figures.mkdir(parents=True, exist_ok=True)
    opening, breakdown = _time_breakdown()
    profile, _ = load("profile")
    gpu_opening, gpu_parts = _gpu_book(profile)
    if gpu_opening:
        clause = f"On the GPU: {gpu_opening}."
        opening = opening.replace("No GPU was lent where these numbers were taken.", clause) if opening else clause + "\n"
    parts = [
        "# Performance\n",
        opening,
        "How fast the toolkit trains DPO on this book's tasks, measured against Hugging Face TRL's "
        "`DPOTrainer` and against the machine's own matmul limit. Every number comes from the scripts in "
        "`benchmarks/` (`pip install .[bench]`, then `python -m benchmarks`); this page is regenerated "
        "from their CSVs at every `make book`.\n",
    ]
    checks: list[tuple[str, float]] = []
    parts += breakdown
    parts += _flops_by_category()

    throughput, path = load("throughput")
    parts.append("## One model: the toolkit against TRL\n")
    if throughput is None:
        parts.append("Not measured yet: run `python -m benchmarks.throughput`.\n")
    else:
        parts.append(
            f"Machine: {_machine(throughput)}. Same data (the KL sweep's number-line pairs), batch 16, RMSprop 5e-5, "
            f"β 0.1, {int(throughput['steps'].iloc[0])} steps of each method, alternating, best of three. TRL and the "
            "plain loop train a Hugging Face GPT-2 of the toolkit model's shape (1 layer, d 128, 4 heads, MLP 128, "
            "12 symbols + pad + EOS), built locally.\n"
        )
        columns = {"method": "method", "pairs_per_s": "pairs / s", "best_s": "best wall (s)", "vs_trl": "× TRL"}
        parts.append(_table(throughput, columns, {"pairs_per_s": ",.0f", "best_s": ".2f", "vs_trl": ".2f"}))
        toolkit = throughput.loc[throughput["method"].str.startswith("toolkit"), "vs_trl"].iloc[0]
        checks.append(("one model vs TRL", toolkit))
        parts.append(_source(path))

    sweep, path = load("sweep_speed")
    parts.append("## The 30-β sweep: pair-updates per second\n")
    if sweep is None:
        parts.append("Not measured yet: run `python -m benchmarks.sweep_speed`.\n")
    else:
        parts.append(
            f"Machine: {_machine(sweep)}. Thirty models (one per β) trained for {int(sweep['steps'].iloc[0])} steps of "
            "batch 16 each; the per-β loops were timed on a subset of β in the same run and scaled to 30. A pair-update "
            "is one preference pair used in one model's step.\n"
        )
        parts.append(_table(sweep, {"method": "method", "betas_timed": "β timed", "seconds_30_betas": "s for 30 β",
                                    "pair_updates_per_s": "pair-updates / s", "batched_speedup": "batched ×"},
                            {"seconds_30_betas": ".1f", "pair_updates_per_s": ",.0f", "batched_speedup": ".2f"}))  # fmt: skip
        by_method = sweep.set_index("method")["batched_speedup"]
        plain = by_method[[m for m in by_method.index if m.startswith("plain")]]
        trl = by_method[[m for m in by_method.index if m.startswith("TRL")]]
        if len(trl):
            checks.append(("sweep vs TRL", float(trl.iloc[0])))
        checks.append(("sweep vs plain loop", float(plain.iloc[0])))
        batched = sweep.iloc[0]
        plain_fraction = float(sweep.loc[sweep["method"].str.startswith("plain"), "fraction_of_peak"].iloc[0])
        checks.append(("fraction of peak", float(batched["fraction_of_peak"])))
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
        parts.append(_source(path))

    evaluation, path = load("eval_speed")
    parts.append("## Evaluation against the limit\n")
    if evaluation is None:
        parts.append("Not measured yet: run `python -m benchmarks.eval_speed`.\n")
    else:
        first = evaluation.iloc[0]
        parts.append(
            f"Machine: {_machine(evaluation)}. One evaluation of {int(first['models'])} policies batched as one ensemble "
            f"against an SFT reference, at the KL sweep's paper settings ({int(first['test_prompts'])} test prompts, "
            f"{int(first['kl_samples'])} KL samples each, accuracy and margin on 1,024 test pairs), whole and part by part; "
            "FLOPs counted by torch's FlopCounterMode, the best of three timings, against the peak matmul rate measured "
            "around them.\n"
        )
        parts.append(_table(evaluation, {"part": "part", "seconds": "seconds", "gflop": "GFLOP", "gflops": "GFLOP/s",
                                         "fraction_of_peak": "of peak"},
                            {"seconds": ".2f", "gflop": ".2f", "gflops": ".1f", "fraction_of_peak": ".0%"}))  # fmt: skip
        training = ""
        if sweep is not None:
            where = "" if sweep.iloc[0]["cpu"] == first["cpu"] else f", measured on {sweep.iloc[0]['cpu']}"
            training = f"; training runs at {sweep.iloc[0]['fraction_of_peak']:.0%} (the sweep above{where})"
        slowest = evaluation.iloc[1:].sort_values("fraction_of_peak").iloc[0]
        parts.append(
            f"\nA whole evaluation runs at {first['fraction_of_peak']:.0%} of the peak{training}. The furthest from it is "
            f"{slowest['part']} ({slowest['fraction_of_peak']:.0%}): decoding computes one new token per sequence per step, "
            "so its matrices have a single row per sequence and the per-step overhead weighs most.\n"
        )
        parts.append(_source(path))

    peak, path = load("peak")
    parts.append("## Dense-matmul rate at the model's shapes\n")
    if peak is None:
        parts.append("Not measured yet: run `python -m benchmarks.peak`.\n")
    else:
        parts.append(_table(peak, {"shape": "shape", "gflops": "GFLOP/s", "fraction_of_peak": "of peak"},
                            {"gflops": ".1f", "fraction_of_peak": ".0%"}))  # fmt: skip
        parts.append(_source(path))

    time_rows = _time_targets()
    if checks or time_rows:
        parts.append("## Targets\n")
        rows = time_rows + [f"| {name} | ≥ {TARGETS[name]:g} | {_verdict(v, TARGETS[name])} |" for name, v in checks]
        parts.append("| target | goal | measured |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n")
        parts.append(
            "What stands between the toolkit and the limit: each step's matrices are small (16 pairs × 2 sequences × "
            "about 9 tokens per model), so the elementwise work (softmax, LayerNorm, GELU, the optimizer) and copies "
            "weigh more than the matmuls, and the prompt is computed twice per pair; evaluation (its own section "
            "above) runs further still from the limit. The next section measures each part.\n"
        )
    parts += _step_anatomy()
    parts += _float_order_verdicts()

    scaling, path = load("scaling")
    parts.append("## Scaling\n")
    if scaling is None:
        parts.append("Not measured yet: run `python -m benchmarks.scaling`.\n")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        models = scaling[scaling["axis"].str.startswith("models")]
        data = scaling[~scaling["axis"].str.startswith("models")]
        sns.lineplot(data=models, x="size", y="pair_updates_per_s", marker="o", ax=axes[0])
        axes[0].set(xscale="log", xlabel="models trained at once (β)", ylabel="pair-updates / s", title="throughput vs models")
        sns.lineplot(data=data, x="size", y="seconds", marker="o", ax=axes[1])
        axes[1].set(xlabel="training pairs (30 β, one epoch)", ylabel="wall time (s)", title="cost vs data")
        fig.tight_layout()
        _save(fig, figures / "scaling.png")
        parts.append("![Pair-updates per second as the number of β trained at once grows, and wall time as the data grows]"
                     "(performance/scaling.png)\n")  # fmt: skip
        columns = {"axis": "axis", "size": "size", "seconds": "seconds", "pair_updates_per_s": "pair-updates / s"}
        parts.append(_table(scaling, columns, {"seconds": ".2f", "pair_updates_per_s": ",.0f"}))
        parts.append(_source(path))

    book, path = load("book")
    parts.append("## The whole book\n")
    if book is None:
        parts.append("Not measured yet: run `make book`, then `python -m benchmarks.book`.\n")
    else:
        parts.append(
            "Wall time and the papermill kernel's peak resident memory of each chapter's last real run "
            "(`tools/bookbuild.py` records them; a chapter whose inputs did not change is skipped and keeps its row). "
            "Chapter runs reuse cached training where its configuration is unchanged, so a row can be far below a "
            "from-scratch run.\n"
        )
        parts.append(_table(book, {"source": "build", "profile": "profile", "chapter": "chapter", "wall_s": "wall (s)",
                                   "peak_rss_mib": "peak memory (MiB)"}, {"wall_s": ",.0f", "peak_rss_mib": ",.0f"}))  # fmt: skip
        parts.append(_source(path))

    parts += gpu_parts
    gpu, path = load("sweep_speed_gpu")
    parts.append("## Beyond the laptop\n")
    if gpu is None:
        parts.append(
            "No GPU was available where these numbers were taken, so this page has no GPU row. On a machine with CUDA, "
            "`python -m benchmarks.sweep_speed --device cuda` adds one.\n"
        )
    else:
        parts.append(f"The sweep benchmark on {gpu['device'].iloc[0]} (`--device cuda`; TRL not run there):\n")
        columns = {"method": "method", "pair_updates_per_s": "pair-updates / s", "fraction_of_peak": "of the GPU's matmul peak"}
        parts.append(_table(gpu, columns, {"pair_updates_per_s": ",.0f", "fraction_of_peak": ".0%"}))
        parts.append(_source(path))
    page = executed / "performance.md"
    text = "\n".join(parts)
    if not page.exists() or page.read_text() != text:
        page.write_text(text)
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, required=True, help="the folder book/chapters points to")
    args = parser.parse_args(argv)
    print(f"performance page: {render(args.executed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
