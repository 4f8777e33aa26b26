"""Render the book's Performance page from the benchmark CSVs.

    python -m benchmarks.report --executed _build/executed

Reads each CSV from ``_build/benchmarks/`` when this machine has run the suite, else the
committed reference measurements in ``benchmarks/results/``, and writes
``<executed>/performance.md`` with its figures in ``<executed>/performance/``. A missing
CSV leaves its section saying so. Needs only the toolkit's own dependencies.

The sections live by subject: ``report_time`` (wall time, before and after, the whole book),
``report_kernels`` (FLOPs by category, one step op by op), ``report_speed`` (against TRL and
the machine's limit, targets, scaling), ``report_float_order`` (float order and the verdicts,
the book on a GPU); ``report_common`` holds what they share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.report_common import load
from benchmarks.report_float_order import float_order_verdicts, gpu_book
from benchmarks.report_kernels import flops_by_category, step_anatomy
from benchmarks.report_speed import (
    beyond_the_laptop,
    evaluation,
    long_runs,
    one_model,
    peak_rate,
    replicates,
    scaling,
    sweep,
    targets,
)
from benchmarks.report_time import time_breakdown, whole_book

NO_GPU = "No GPU was lent where these numbers were taken."
INTRODUCTION = (
    "How fast the toolkit trains DPO on this book's tasks, measured against Hugging Face TRL's "
    "`DPOTrainer` and against the machine's own matmul limit. Every number comes from the scripts in "
    "`benchmarks/` (`pip install .[bench]`, then `python -m benchmarks`); this page is regenerated "
    "from their CSVs at every `make book`.\n"
)


def _opening(cpu_opening: str, gpu_opening: str) -> str:
    """The page's opening sentence, its GPU clause in place of the sentence that no GPU was lent when a GPU ran the book."""
    if not gpu_opening:
        return cpu_opening
    clause = f"On the GPU: {gpu_opening}."
    return cpu_opening.replace(NO_GPU, clause) if cpu_opening else clause + "\n"


def render(executed: Path) -> Path:
    """Write ``<executed>/performance.md`` and its figures (``<executed>/performance/``), each rewritten only if changed."""
    figures = executed / "performance"
    figures.mkdir(parents=True, exist_ok=True)
    cpu_opening, breakdown = time_breakdown()
    profile, _ = load("profile")
    gpu_opening, gpu_parts = gpu_book(profile)
    one_model_parts, one_model_checks = one_model()
    sweep_parts, sweep_checks = sweep()
    parts = [
        "# Performance\n",
        _opening(cpu_opening, gpu_opening),
        INTRODUCTION,
        *breakdown,
        *flops_by_category(),
        *one_model_parts,
        *sweep_parts,
        *evaluation(),
        *peak_rate(),
        *targets(one_model_checks + sweep_checks),
        *step_anatomy(),
        *float_order_verdicts(),
        *scaling(figures),
        *replicates(),
        *long_runs(),
        *whole_book(),
        *gpu_parts,
        *beyond_the_laptop(),
    ]
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
