"""What every section of the Performance page shares: finding a CSV, a Markdown table, the source
line under it, the machine it was measured on, and saving a figure."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "_build" / "benchmarks", ROOT / "benchmarks" / "results")
MACHINE = ["cpu", "cores", "threads", "torch"]

REQUIRED = {
    "throughput": {"method", "steps", "pairs_per_s", "best_s", "vs_trl"},
    "sweep_speed": {"method", "steps", "betas_timed", "seconds_30_betas", "pair_updates_per_s", "batched_speedup",
                    "mflop_per_pair_update", "gflops", "peak_gflops", "fraction_of_peak"},
    "sweep_speed_gpu": {"method", "steps", "pair_updates_per_s", "fraction_of_peak", "device"},
    "peak": {"shape", "gflops", "fraction_of_peak"},
    "eval_speed": {"part", "seconds", "gflop", "gflops", "peak_gflops", "fraction_of_peak", "models", "test_prompts",
                   "kl_samples"},
    "scaling": {"axis", "size", "seconds", "pair_updates_per_s"},
    "replicates": {"phase", "layout", "seconds", "speedup_of_members", "seeds", "betas", "steps"},
    "long_runs": {"way", "ms_per_step", "speedup", "compile_s", "break_even_updates", "run_saving", "max_rel_grad_diff",
                  "same_bits", "members", "run_updates"},
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
            needed = REQUIRED[name] if name in NO_MACHINE else REQUIRED[name] | set(MACHINE)
            missing = needed - set(df.columns)
            if missing or df.empty:
                raise ValueError(f"{path}: lacks columns {sorted(missing)} or rows; re-run `python -m benchmarks.{name}`")
            return df, path
    return None, None


def markdown(shown: pd.DataFrame) -> str:
    """A Markdown table of shown's cells as str() writes them (no number parsing), ending in a newline."""
    return shown.map(str).to_markdown(index=False, disable_numparse=True) + "\n"


def table(df: pd.DataFrame, columns: dict[str, str], formats: dict[str, str]) -> str:
    """The Markdown table of df's `columns` (name → heading), each column in `formats` written by its format spec."""
    shown = df[list(columns)].rename(columns=columns)
    for column, fmt in formats.items():
        shown[columns[column]] = df[column].map(lambda x, fmt=fmt: "" if pd.isna(x) else format(x, fmt))
    return markdown(shown)


def source(path: Path | None) -> str:
    """The line under a section naming the CSV it was read from, and whose measurements those are."""
    if path is None:
        return ""
    where = "this machine's run" if path.parent == SOURCES[0] else "the reference measurements committed with the book"
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"*Source: `{shown}` ({where}).*\n"


def machine_line(df: pd.DataFrame) -> str:
    """The machine of a table's first row: 'CPU, N cores, torch V on T threads'."""
    row = df.iloc[0]
    return f"{row['cpu']}, {row['cores']} cores, torch {row['torch']} on {row['threads']} threads"


def save(fig: plt.Figure, path: Path) -> None:
    """Save as PNG, leaving an identical file untouched (so that an unchanged page is not re-rendered)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    if not path.exists() or path.read_bytes() != buffer.getvalue():
        path.write_bytes(buffer.getvalue())
