"""Shared helpers of the benchmark scripts: where results go, the machine, timing and FLOP counting."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "benchmarks"


def machine() -> dict[str, str | int]:
    """CPU model, cores, torch threads and version: the context every result row carries."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "threads": torch.get_num_threads(), "torch": torch.__version__}


def write(df: pd.DataFrame, name: str) -> Path:
    """Print df as a table and write it to _build/benchmarks/<name>.csv with the machine's columns."""
    OUT.mkdir(parents=True, exist_ok=True)
    df = df.assign(**machine())
    path = OUT / f"{name}.csv"
    df.to_csv(path, index=False)
    shown = df.drop(columns=list(machine()))
    print(shown.to_string(index=False, float_format=lambda x: f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"))
    print(f"→ {path}")
    return path


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops(fn: Callable[[], object]) -> int:
    """Floating-point operations torch counts (matmuls, attention, convolutions) in one call."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def stems() -> list[str]:
    """The chapters, in the order of the table of contents."""
    lines = (ROOT / "_toc.yml").read_text().splitlines()
    found = [line.split("book/chapters/", 1)[1].strip() for line in lines if "- file: book/chapters/" in line]
    return [s for s in found if (ROOT / "notebooks" / f"{s}.ipynb").exists()]


def fresh_inductor_cache(prefix: str) -> None:
    """Point torch.compile's inductor caches at a fresh temporary folder, removed when the process ends, so
    that a compile timed after this is a cold one, not served from an earlier run's cache."""
    folder = tempfile.mkdtemp(prefix=f"{prefix}-inductor-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
