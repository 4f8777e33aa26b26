"""``benchmarks.profile --at COMMIT``: profile the book as it was at COMMIT with today's timers.

The commit's files are exported to a temporary folder (``git archive``), this ``benchmarks``
package replaces theirs, and ``benchmarks.profile`` runs there in a subprocess with the other
arguments, so that its chapters, parameters and toolkit are the commit's and the timers are today's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import ROOT


def without_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv less each of `options` and its value (``--at X`` or ``--at=X``)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            rest.append(arg)
    return rest


def profile_at(commit: str, argv: list[str], csv: str | None) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Run ``benchmarks.profile`` with `argv` (less --at and --csv) on the book as it was at `commit` (see
    the module's docstring): (the CSV name to merge into, ``--csv`` or ``profile_at_SHA``; its rows and its
    claims, with a `commit` column, the rows also `source`, neither with the machine's columns)."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{commit}^{{commit}}"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"--at {commit!r}: not a commit of this repository ({error.stderr.strip()})") from None
    rest = without_options(argv, ("--at", "--csv"))
    name = csv or f"profile_at_{sha}"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / sha
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        shutil.rmtree(tree / "benchmarks", ignore_errors=True)
        shutil.copytree(ROOT / "benchmarks", tree / "benchmarks", ignore=shutil.ignore_patterns("results", "__pycache__"))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-m", "benchmarks.profile", *rest, "--csv", "profile"], cwd=tree, env=env, check=True)
        source = f"benchmarks.profile --at {sha} ({' '.join(rest)})"
        rows = pd.read_csv(tree / "_build" / "benchmarks" / "profile.csv").assign(commit=sha, source=source)
        claims = pd.read_csv(tree / "_build" / "benchmarks" / "profile_claims.csv").assign(commit=sha)
    machine_columns = ["cpu", "cores", "threads", "torch"]  # write() adds this machine's again
    return name, rows.drop(columns=machine_columns), claims.drop(columns=machine_columns)
