"""Wall time and peak memory of building the book, per profile and per chapter.

    python -m benchmarks.book [--run-quick]

Per chapter: the wall time and the papermill kernel's peak resident memory that
``tools/bookbuild.py`` records in ``timings.csv`` at every real run (a chapter skipped as
unchanged keeps its last run's row): ``_build/executed`` for ``make book`` (paper
profile by default) and ``_build/test-book/executed`` for the quick book of ``make test``.
With --run-quick, first executes every chapter at the quick profile from scratch (fresh
result caches in a temporary folder) and times the whole run; without it, the rows of the
last such run in book.csv are kept.
Writes ``_build/benchmarks/book.csv``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import OUT, ROOT, machine, stems, write
from tools.peakmem import PeakMemory

SOURCES = {"make book": ROOT / "_build" / "executed", "make test (quick book)": ROOT / "_build" / "test-book" / "executed"}


def run_quick() -> pd.DataFrame:
    """Every chapter at the quick profile from scratch; per-chapter rows plus a total."""
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as memory:
        start = time.perf_counter()
        executed = Path(tmp) / "executed"
        command = [sys.executable, "-m", "tools.bookbuild", "chapter", *stems(), "--profile", "quick",
                   "--executed", str(executed), "--results", str(Path(tmp) / "results")]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
        chapters = pd.read_csv(executed / "timings.csv").assign(source="fresh quick run (benchmarks.book --run-quick)")
    totals = {"chapter": "all chapters", "profile": "quick", "outcome": "ran", "wall_s": total, "peak_rss_mib": memory.mib}
    return pd.concat([chapters, pd.DataFrame([totals | {"source": "fresh quick run (benchmarks.book --run-quick)"}])])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-quick", action="store_true", help="first build every chapter at the quick profile from scratch")
    args = parser.parse_args(argv)
    previous = OUT / "book.csv"
    if args.run_quick:
        frames = [run_quick()]
    elif previous.exists():  # keep the last from-scratch quick run
        old = pd.read_csv(previous)
        frames = [old[old["source"].str.startswith("fresh")].drop(columns=list(machine()), errors="ignore")]
    else:
        frames = []
    for source, folder in SOURCES.items():
        if (folder / "timings.csv").exists():
            frames.append(pd.read_csv(folder / "timings.csv").assign(source=source))
    if not frames:
        print("no timings yet: run `make book` or `make test` first, or pass --run-quick", file=sys.stderr)
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    order = {s: i for i, s in enumerate([*stems(), "all chapters"])}
    df = df.sort_values(["source", "chapter"], key=lambda c: c.map(order) if c.name == "chapter" else c).reset_index(drop=True)
    write(df[["source", "profile", "chapter", "outcome", "wall_s", "peak_rss_mib"]], "book")
    return df


if __name__ == "__main__":
    main()
