"""The Performance page on wall time: the opening sentence, where each chapter's time goes, the
times before and after issue 20's speed-ups, the whole book's wall time and its targets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import common
from benchmarks.report_common import load, machine_line, source, table

# The speed issue's wall-time targets (minutes, at most), judged on book.csv's from-scratch runs; the paper
# book's only where every chapter's trained claims rest on at least MIN_REPLICATES seeds (book.csv's `replicates`)
TIME_GOALS = {"paper": 60.0, "quick": 2.0}
MIN_REPLICATES = {"paper": 8}


def time_verdict(minutes: float, goal: float) -> str:
    return f"**met** ({minutes:.1f} ≤ {goal:g})" if minutes <= goal else f"**not met** ({minutes:.1f} > {goal:g})"


def _fresh_runs(book: pd.DataFrame) -> pd.DataFrame:
    """book.csv's from-scratch whole-book runs (`benchmarks.book --run … --jobs N`)."""
    return book[(book["chapter"] == "all chapters") & book["source"].str.contains("--jobs", regex=False)]


def time_targets() -> list[tuple[str, str, str]]:
    """Rows (target, goal, measured) of the targets table for the whole book's wall time: the fastest from-scratch
    run of each profile in book.csv (its chapters, run by `benchmarks.book --run`; the site build is not included)."""
    book, _ = load("book")
    if book is None:
        return []
    runs = _fresh_runs(book)
    if "replicates" not in runs:
        runs = runs.assign(replicates=float("nan"))  # an older book.csv: no run counts as enough replicates
    rows = []
    for profile in ("paper", "quick"):
        mine = runs[runs["profile"] == profile]
        if not len(mine):
            continue
        goal, least = TIME_GOALS[profile], MIN_REPLICATES.get(profile)
        name = f"{profile} book from scratch, its chapters (min)" + (f", ≥ {least} replicates per claim" if least else "")
        enough = mine[mine["replicates"] >= least] if least else mine
        if len(enough):
            rows.append((name, f"≤ {goal:g}", time_verdict(enough["wall_s"].min() / 60, goal)))
            continue
        fastest = mine.loc[mine["wall_s"].idxmin()]
        said = [f"{fastest['wall_s'] / 60:.1f} min", "replicates not recorded" if pd.isna(fastest["replicates"])
                else f"at {fastest['replicates']:.0f} replicates", str(fastest.get("date", "") or "")]  # fmt: skip
        said = ", ".join(x for x in said if x and x != "nan")
        rows.append((name, f"≤ {goal:g}", f"**not met**: not measured at ≥ {least} replicates ({said})"))
    return rows


def chapter_seconds(profile: pd.DataFrame) -> pd.DataFrame:
    """One row per (profile, chapter) in the book's order: the chapter's in-process wall time."""
    return profile.groupby(["profile", "chapter"], sort=False)["chapter_s"].first().reset_index()


def book_walls(cpu: str) -> tuple[str, str]:
    """From book.csv's from-scratch whole-book runs: the quotable sentence on the paper profile's
    `make book` wall time ('' without such a run), and one on every run's wall time ('' without any)."""
    book, _ = load("book")
    if book is None:
        return "", ""
    said, lead = [], ""
    for profile, group in sorted(_fresh_runs(book).groupby("profile"), key=lambda item: item[0] != "paper"):
        how = [(row["source"].split(", ", 1)[1].split(" (")[0], row["wall_s"] / 60) for _, row in group.iterrows()]
        said.append(f"{profile} profile " + ", ".join(f"{minutes:.1f} min ({what})" for what, minutes in how))
        if profile == "paper":
            what, minutes = min(how, key=lambda item: item[1])
            measured = group.loc[group["wall_s"].idxmin()].get("date", "")
            on = f", measured {measured}" if isinstance(measured, str) and measured else ""
            lead = f"**The whole book at paper scale: {minutes:.0f} min on a {cpu}** (`make book` from scratch, {what}{on}).\n\n"
    return lead, (f"`make book` from scratch, wall time: {'; '.join(said)}. " if said else "")


def _opening(profile: pd.DataFrame) -> str:
    """The page's opening sentence: the whole book's computation per profile (never a total over some chapters only)."""
    chapters = chapter_seconds(profile)
    expected = len(common.stems()) or chapters["chapter"].nunique()
    said = []
    by_profile = dict(list(chapters.groupby("profile", sort=False)))
    dated = profile.dropna(subset=["date"]) if "date" in profile else None  # rows older than the column have none
    dates = pd.DataFrame() if dated is None else dated.groupby("profile")["date"].agg(["min", "max"])
    for name in sorted(by_profile, key=lambda n: n != "paper"):  # the paper profile first: the number readers quote
        group = by_profile[name]
        when = " (measured " + " to ".join(dict.fromkeys(dates.loc[name])) + ")" if name in dates.index else ""
        if len(group) >= expected:
            said.append(f"{group['chapter_s'].sum() / 60:.1f} min at the {name} profile{when}")
        else:
            said.append(f"at the {name} profile {len(group)} of {expected} chapters measured so far")
    first = profile.iloc[0]
    lead, walls = book_walls(f"{first['cores']}-core {first['cpu']}")
    return lead + (
        f"**The whole book's computation from scratch: {'; '.join(said)}, on {machine_line(profile)}** "
        "(chapters run one after another in one process by `python -m benchmarks.profile`; a `make book` run adds "
        f"about 7 s per chapter for starting the kernel, importing and rendering figures). {walls}No GPU was "
        "lent where these numbers were taken.\n"
    )


def time_breakdown() -> tuple[str, list[str]]:
    """The page's opening sentence, and the sections on where each chapter's time goes and the times before and after."""
    profile, path = load("profile")
    baseline, baseline_path = load("profile_baseline")
    if profile is None:
        return "", ["## Where the time goes\n", "Not measured yet: run `python -m benchmarks.profile`.\n"]
    parts = [
        "## Where the time goes\n",
        "`benchmarks/profile.py` executes each chapter's notebook source with the profile's parameters and fresh "
        "caches, and times the toolkit's entry points: the exclusive wall time of training loops (evaluation "
        "excluded), greedy decoding, sampling for the KL estimate, scoring those samples (KL), the rest of "
        "evaluation (test-pair log-probs, metrics), exact enumeration of response masses, the vanishing-gradients "
        "chapter's exact per-input gradients, plotting, and file I/O; `other` is everything else.\n",
    ]
    for name, frame in profile.groupby("profile", sort=False):
        seconds = frame.pivot_table(index="chapter", columns="category", values="seconds", sort=False).fillna(0.0)
        seconds = seconds.loc[:, seconds.sum() > 0.05]
        seconds["total"] = frame.groupby("chapter", sort=False)["chapter_s"].first()
        shown = seconds.reset_index()
        parts.append(f"Seconds per category, {name} profile:\n")
        parts.append(table(shown, {c: c for c in shown.columns}, {c: ".1f" for c in shown.columns if c != "chapter"}))
    parts.append(source(path))
    if baseline is not None:
        parts += before_after(baseline, baseline_path, profile)
    return _opening(profile), parts


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


def _claims_of(claims: pd.DataFrame | None, profile_name: str, chapter: str) -> pd.DataFrame | None:
    """The claims one profiled run of a chapter kept, None without any."""
    if claims is None:
        return None
    rows = claims[(claims["profile"] == profile_name) & (claims["chapter"] == chapter)]
    return rows if len(rows) else None


def _totals(both: pd.DataFrame, same: pd.Series, after: pd.DataFrame) -> pd.DataFrame:
    """One total row per profile over its chapters with the same claims ('all chapters' when that is every one timed now)."""
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
    return pd.DataFrame(totals)


def before_after(baseline: pd.DataFrame, baseline_path: Path | None, profile: pd.DataFrame) -> list[str]:
    """The before/after table: each chapter's in-process time at the baseline commit and now, and
    whether the two runs computed the same claims. Only a chapter with the same claims shows a
    speed-up; totals are over those chapters, so that work added since is never counted as slowness."""
    before = chapter_seconds(baseline).rename(columns={"chapter_s": "before"})
    after = chapter_seconds(profile).rename(columns={"chapter_s": "after"})
    both = before.merge(after, on=["profile", "chapter"])
    if both.empty:
        return []
    claims_before, _ = load("profile_baseline_claims")
    claims_after, _ = load("profile_claims")
    both["work"] = [
        compare_work(_claims_of(claims_before, p, c), _claims_of(claims_after, p, c))
        for p, c in zip(both["profile"], both["chapter"], strict=True)
    ]
    same = both["work"].str.startswith("same claims")
    both["speedup"] = (both["before"] / both["after"]).where(same)
    both = pd.concat([both, _totals(both, same, after)], ignore_index=True)
    sources = baseline.groupby("profile", sort=False)["source"].first()
    columns = {"profile": "profile", "chapter": "chapter", "before": "before (s)", "after": "after (s)", "speedup": "×",
               "work": "what the two runs computed"}  # fmt: skip
    return [
        "Before and after the speed-ups of issue 20: each chapter's in-process time (as above) at the commit before "
        "them and now. A chapter's two runs are compared by the claims each computed: a speed-up (×) is shown only "
        "where both answered the same claims, since a chapter that gained claims since (a drifting arm, a map) does "
        "more work now. *Before* was measured as follows:\n",
        "".join(f"- {p}: {sources[p]}{_unmeasured(before, after, p)}\n" for p in both["profile"].unique()) + "\n",
        table(both, columns, {"before": ".1f", "after": ".1f", "speedup": ".2f"}),
        source(baseline_path),
    ]


def whole_book() -> list[str]:
    """The section on each chapter's last real run in the book build (book.csv)."""
    book, path = load("book")
    parts = ["## The whole book\n"]
    if book is None:
        return [*parts, "Not measured yet: run `make book`, then `python -m benchmarks.book`.\n"]
    parts.append(
        "Wall time and the papermill kernel's peak resident memory of each chapter's last real run "
        "(`tools/bookbuild.py` records them; a chapter whose inputs did not change is skipped and keeps its row). "
        "Chapter runs reuse cached training where its configuration is unchanged, so a row can be far below a "
        "from-scratch run.\n"
    )
    parts.append(table(book, {"source": "build", "profile": "profile", "chapter": "chapter", "wall_s": "wall (s)",
                              "peak_rss_mib": "peak memory (MiB)"}, {"wall_s": ",.0f", "peak_rss_mib": ",.0f"}))  # fmt: skip
    parts.append(source(path))
    return parts
