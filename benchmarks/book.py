"""Wall time and peak memory of building the book, per profile and per chapter.

    python -m benchmarks.book [--run PROFILE ...] [--jobs N ...]

Per chapter: the wall time and the papermill kernel's peak resident memory that
``tools/bookbuild.py`` records in ``timings.csv`` at every real run (a chapter skipped as
unchanged keeps its last run's row): ``_build/executed`` for ``make book`` (paper
profile by default) and ``_build/test-book/executed`` for the quick book of ``make test``.
With --run, first executes every chapter at each PROFILE from scratch (fresh result caches
in a temporary folder, or in KEEP/PROFILE-jobsN with --keep KEEP), once for each N of
--jobs (chapters run at once, as ``make book JOBS=N``; default 2), and times the whole
run, recording its replicates (the smallest `seeds` over the chapters); the rows of earlier
such runs that were not repeated are kept from the last book.csv. Writes
``_build/benchmarks/book.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import OUT, ROOT, machine, stems, write
from tools.bookbuild import seed_counts
from tools.peakmem import PeakMemory

SOURCES = {"make book": ROOT / "_build" / "executed", "make test (quick book)": ROOT / "_build" / "test-book" / "executed"}


def fresh_source(profile: str, jobs: int) -> str:
    """The `source` of the rows of one from-scratch run."""
    at_once = "one chapter at a time" if jobs == 1 else f"{jobs} chapters at once"
    return f"fresh {profile} run, {at_once} (benchmarks.book --run {profile} --jobs {jobs})"


def replicates(profile: str) -> int:
    """The fewest replicates a chapter's trained claims rest on at `profile`: the smallest `seeds`
    parameter over the chapters (each chapter's replicates of its trained claims)."""
    return min(seed_counts(stems(), profile).values())


def run_fresh(profile: str, jobs: int, keep: Path | None = None) -> pd.DataFrame:
    """Every chapter at `profile` from scratch, `jobs` at once; per-chapter rows plus a total.
    With `keep`, the executed chapters and their results are left in keep/PROFILE-jobsN (emptied first)."""
    source = fresh_source(profile, jobs)
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as memory:
        folder = Path(tmp) if keep is None else keep / f"{profile}-jobs{jobs}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        executed = folder / "executed"
        command = [sys.executable, "-m", "tools.bookbuild", "chapter", *stems(), "--profile", profile, "--jobs", str(jobs),
                   "--executed", str(executed), "--results", str(folder / "results")]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
        chapters = pd.read_csv(executed / "timings.csv").assign(source=source)
    totals = {"chapter": "all chapters", "profile": profile, "outcome": "ran", "wall_s": total, "peak_rss_mib": memory.mib}
    today = datetime.date.today().isoformat()
    runs = pd.concat([chapters, pd.DataFrame([totals | {"source": source}])])
    return runs.assign(date=today, replicates=replicates(profile))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", default=[], metavar="PROFILE", help="build every chapter at PROFILE from scratch")
    parser.add_argument("--jobs", nargs="+", type=int, default=[2], metavar="N", help="chapters at once in those runs (≥ 1)")
    parser.add_argument("--keep", type=Path, help="leave those runs' chapters and results in KEEP/PROFILE-jobsN")
    args = parser.parse_args(argv)
    if any(j < 1 for j in args.jobs):
        parser.error(f"--jobs must be ≥ 1, got {args.jobs}")
    fresh = [run_fresh(profile, jobs, args.keep) for profile in args.run for jobs in args.jobs]
    previous = OUT / "book.csv"
    frames = list(fresh)
    if previous.exists():  # keep the earlier from-scratch runs that were not repeated
        old = pd.read_csv(previous).drop(columns=list(machine()), errors="ignore")
        repeated = {fresh_source(profile, jobs) for profile in args.run for jobs in args.jobs}
        fresh_runs = old["source"].str.startswith("fresh") & old["source"].str.contains("--jobs", regex=False)
        frames.append(old[fresh_runs & ~old["source"].isin(repeated)])
    for source, folder in SOURCES.items():
        if (folder / "timings.csv").exists():
            modified = datetime.date.fromtimestamp((folder / "timings.csv").stat().st_mtime).isoformat()
            frames.append(pd.read_csv(folder / "timings.csv").assign(source=source, date=modified))
    if not frames:
        print("no timings yet: run `make book` or `make test` first, or pass --run quick", file=sys.stderr)
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    order = {s: i for i, s in enumerate([*stems(), "all chapters"])}
    df = df.sort_values(["source", "chapter"], key=lambda c: c.map(order) if c.name == "chapter" else c).reset_index(drop=True)
    write(df.reindex(columns=["source", "profile", "chapter", "outcome", "wall_s", "peak_rss_mib", "date", "replicates"]), "book")
    return df


if __name__ == "__main__":
    main()
