"""Tables of the paper-profile book on a GPU, and the verdicts it reached beside the CPU's.

python -m benchmarks.gpu_book collect OUTDIR_OR_TARBALL ...
    after `bash benchmarks/gpu_book.sh OUTDIR` (on a machine with CUDA): writes
    _build/benchmarks/gpu_book.csv (one row per chapter and run: outcome, wall time, how
    many chapter processes shared the GPU, its mean utilisation and peak memory),
    profile_gpu.csv (where each finished chapter's time went, benchmarks.profile's rows)
    and claims_gpu.csv (every finished chapter's verdicts). A chapter run again in a
    later run replaces its earlier row.
python -m benchmarks.gpu_book claims RESULTS_DIR --name claims_cpu
    every chapter's verdicts in RESULTS_DIR/<stem>/claims.csv (a paper-profile run on the
    CPU: `python -m benchmarks.profile --profile paper --results RESULTS_DIR`) as
    _build/benchmarks/claims_cpu.csv, the CPU side of the Performance page's comparison.
"""

from __future__ import annotations

import argparse
import re
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import OUT, stems
from dpo_toolkit.core.claims import EVIDENCE

SUMMARY_LINE = re.compile(r"^(?P<name>[\w]+): (?P<outcome>ran|stopped at the (?P<budget>\d+) s budget|failed \(exit \d+\)), "
                          r"(?P<elapsed>[\d.]+) s after the start$")  # fmt: skip


def claims_table(results: Path) -> pd.DataFrame:
    """(chapter, claim_id, verdict, our_value, and the evidence columns n, estimate, ci_low, ci_high, threshold where the
    claims carry them) of every chapter with a claims.csv under `results`, in the book's order."""
    frames = []
    for stem in stems():
        path = results / stem / "claims.csv"
        if path.exists():
            claims = pd.read_csv(path, dtype=str, keep_default_na=False)
            keep = ["claim_id", "verdict", "our_value", *[c for c in EVIDENCE if c in claims]]
            frames.append(claims[keep].assign(chapter=stem))
    if not frames:
        raise ValueError(f"{results}: no <chapter>/claims.csv found")
    table = pd.concat(frames, ignore_index=True)
    return table[["chapter", *[c for c in table.columns if c != "chapter"]]]


def read_run(folder: Path, run: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(chapters, profile rows, claims) of one gpu_book.sh output folder."""
    summary = (folder / "summary.txt").read_text().splitlines()
    gpu = summary[1].split(",")[0].strip()
    torch_version = summary[2].split()[1]
    matches = [m for m in map(SUMMARY_LINE.match, summary) if m]
    if not matches:
        raise ValueError(f"{folder}/summary.txt: no chapter outcome lines")
    utilisation = pd.read_csv(folder / "gpu_utilisation.csv", skipinitialspace=True)
    busy = utilisation.iloc[:, 1].astype(str).str.rstrip(" %").astype(float)
    memory = utilisation.iloc[:, 2].astype(str).str.rstrip(" MiB").astype(float)
    large = folder / "profile_gpu_drift_map_large.csv"  # the drift map at a larger scale: its own row, not a profile
    profiles = [pd.read_csv(p) for p in sorted(folder.glob("profile_gpu_*.csv")) if p != large]
    profile = pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame(columns=["chapter", "chapter_s"])
    seconds = profile.groupby("chapter")["chapter_s"].first().to_dict()
    if large.exists():
        seconds["drift_map_large"] = float(pd.read_csv(large)["chapter_s"].iloc[0])
    rows = []
    for m in matches:
        ran = m["outcome"] == "ran"
        rows.append({
            "run": run, "chapter": m["name"], "outcome": m["outcome"],
            "wall_s": seconds.get(m["name"], float(m["elapsed"])) if ran else float(m["elapsed"]),
            "processes_sharing_gpu": len(matches), "gpu_busy_mean": busy.mean() / 100, "gpu_memory_peak_mib": memory.max(),
            "gpu": gpu, "torch": torch_version,
        })  # fmt: skip
    claims = claims_table(folder / "results") if any((folder / "results").glob("*/claims.csv")) else pd.DataFrame()
    return pd.DataFrame(rows), profile, claims


def _merge(name: str, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """new rows, replacing earlier rows of _build/benchmarks/<name>.csv that share their key columns."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.csv"
    if path.exists() and not new.empty:
        old = pd.read_csv(path)
        done = set(map(tuple, new[keys].astype(str).to_numpy()))
        old = old[[tuple(k) not in done for k in old[keys].astype(str).to_numpy()]]
        new = pd.concat([old, new], ignore_index=True)
    new.to_csv(path, index=False)
    print(f"→ {path} ({len(new)} rows)")
    return new


def collect(sources: list[Path]) -> None:
    """Read gpu_book.sh outputs (folders or their gpu_book.tar.gz) in order and write the three CSVs."""
    chapters, profiles, claims = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run, source in enumerate(sources, start=1):
            folder = source
            if source.is_file() or (source / "gpu_book.tar.gz").exists():
                archive = source if source.is_file() else source / "gpu_book.tar.gz"
                folder = Path(tmp) / f"run{run}"
                with tarfile.open(archive) as tar:
                    tar.extractall(folder, filter="data")
            c, p, k = read_run(folder, run)
            chapters.append(c)
            profiles.append(p.assign(run=run))
            claims.append(k.assign(run=run) if not k.empty else k)
    finished = pd.concat(chapters, ignore_index=True)
    _merge("gpu_book", finished.drop_duplicates("chapter", keep="last"), ["chapter"])
    _merge("profile_gpu", pd.concat(profiles, ignore_index=True).drop_duplicates(["chapter", "category"], keep="last"),
           ["chapter", "category"])  # fmt: skip
    found = [k for k in claims if not k.empty]
    if found:
        _merge("claims_gpu", pd.concat(found, ignore_index=True).drop_duplicates(["chapter", "claim_id"], keep="last"),
               ["chapter", "claim_id"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gather = sub.add_parser("collect", help="tables from gpu_book.sh outputs")
    gather.add_argument("sources", nargs="+", type=Path, help="gpu_book.sh OUTDIRs or their gpu_book.tar.gz, oldest first")
    verdicts = sub.add_parser("claims", help="a results folder's verdicts as a CSV")
    verdicts.add_argument("results", type=Path)
    verdicts.add_argument("--name", default="claims_cpu", help="write _build/benchmarks/NAME.csv")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.sources)
    else:
        table = claims_table(args.results)
        OUT.mkdir(parents=True, exist_ok=True)
        table.to_csv(OUT / f"{args.name}.csv", index=False)
        print(f"→ {OUT / args.name}.csv ({len(table)} claims)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
