"""Where a chapter's time goes: run it in-process at a profile and attribute its wall time.

    python -m benchmarks.profile [STEM ...] [--profile paper|quick]

Each chapter's notebook source (``notebooks/<stem>.md``) is executed in this process with the
profile's parameters (``params/<profile>/<stem>.yaml``, as ``make book`` applies them) and
fresh result caches in a temporary folder that the chapters of one invocation share, as a
``make book`` from scratch does (``claims.run_cache``): a run that an earlier chapter trained
(the KL sweep's SFT references, for one) is loaded, and charged to the chapter that trained it. The
toolkit's entry points are wrapped by timers (``benchmarks.profile_attribution``) that attribute
*exclusive* wall time (a call's time minus that of wrapped calls inside it) to one category each:

- training: ``train.optimize`` and ``train.fit_full_batch`` (every SFT, DPO and RFT loop), the
  unconstrained-features DPO and CHES's single-pair runs, the evaluation callbacks excluded;
- greedy decoding / sampling: ``generate._decode`` without / with a random generator;
- KL scoring: ``Evaluator.kl`` after its sampling (policy and reference log-probs of the samples);
- evaluation (log-probs, metrics): the rest of ``Evaluator.__call__``;
- exact enumeration: ``exact.response_masses`` and ``exact.enumerate_responses``;
- per-input gradients: the vanishing-gradients chapter's exact gradient norms;
- plotting: every ``dpo_toolkit.plotting`` function;
- I/O: ``torch.save``/``torch.load``, CSV reads and writes;
- other: everything else (chapter logic, imports, Python).

``--flops`` also counts, with torch's FlopCounterMode, the floating-point operations of each
category, attributed exclusively like the time (a ``gflop`` column), and writes
``_build/benchmarks/profile_flops.csv`` instead: the counter slows small operations down, so
its times are not the chapter's, and the Performance page divides these counts by the times of
an uncounted run (``profile.csv``) to give each category's share of the machine's peak.

Writes ``_build/benchmarks/profile.csv`` after every chapter (one row per chapter and category,
merged with the rows of chapters not re-run).

``--device cuda`` runs the chapters with ``device = "cuda"`` (their notebook parameter); the
timers then wait for the GPU at the end of each timed call, so that asynchronous kernels are
charged to the call that launched them. ``--set NAME=VALUE`` overrides any other parameter
(a Python literal), ``--results DIR`` keeps the chapters' results (claims tables, CSVs) there
instead of a temporary folder, and ``--csv NAME`` writes ``_build/benchmarks/NAME.csv``.

Beside each CSV, ``NAME_claims.csv`` keeps every profiled chapter's claims (id, verdict, our
value): what the timed run computed, so that a time can be compared with another only where both
runs answered the same questions.

``--at COMMIT`` (``benchmarks.profile_at``) profiles the book as it was at COMMIT (for a *before* beside today's *after*):
the commit's files are exported to a temporary folder (``git archive``), this ``benchmarks``
package replaces theirs, and this script runs there in a subprocess with the other arguments,
so that its chapters, parameters and toolkit are the commit's and the timers are today's. Its
rows come back with ``commit`` and ``source`` columns, into ``--csv`` (default
``profile_at_COMMIT``); ``--csv profile_baseline`` gives the Performance page's *before*.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jupytext
import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import OUT, ROOT, stems, write
from benchmarks.profile_at import profile_at
from benchmarks.profile_attribution import CATEGORIES, Attribution, instrumented
from tools.bookbuild import notebook_parameters, profile_overrides


def chapter_source(stem: str, profile: str, extra: dict | None = None) -> str:
    """The notebook's code cells as one script: after the parameters cell, the profile's parameter
    overrides, then `extra` (name → value); each extra name must be one the notebook declares."""
    notebook = jupytext.read(ROOT / "notebooks" / f"{stem}.md")
    overrides = profile_overrides(stem, profile)  # the book's own reading of params/<profile>/<stem>.yaml
    parts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts.append(cell.source)
        if "parameters" in cell.metadata.get("tags", []):
            declared = set(notebook_parameters(stem))  # as papermill reads them
            unknown = sorted(set(extra or {}) - declared)
            if unknown:
                raise ValueError(f"notebooks/{stem}.md has no parameter {unknown}; it declares {sorted(declared)}")
            parts += [f"{name} = {value!r}" for name, value in {**overrides, **(extra or {})}.items()]
    return "\n\n".join(parts)


def profile_chapter(
    stem: str, profile: str, extra: dict | None = None, results: Path | None = None, count_flops: bool = False
) -> pd.DataFrame:
    """One chapter's wall time by category, from scratch; its results go to `results` (default: a
    temporary folder), whose runs/ caches must be empty for a from-scratch time. With count_flops,
    also its FLOPs by category (column `gflop`), counted by FlopCounterMode around the whole chapter."""
    source = chapter_source(stem, profile, extra)
    counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    attribution = Attribution(counter if count_flops else None)
    with tempfile.TemporaryDirectory() as tmp, instrumented(attribution), counter:
        previous_env, previous_cwd = os.environ.get("DPO_RESULTS_ROOT"), Path.cwd()
        os.environ["DPO_RESULTS_ROOT"] = str(Path(results).resolve()) if results else tmp
        os.chdir(ROOT / "notebooks")
        plt.show = lambda *a, **k: None
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, f"notebooks/{stem}.md", "exec"), {"__name__": "__main__"})
            total = time.perf_counter() - start
        finally:
            os.chdir(previous_cwd)
            plt.close("all")
            if previous_env is None:
                os.environ.pop("DPO_RESULTS_ROOT", None)
            else:
                os.environ["DPO_RESULTS_ROOT"] = previous_env
    seconds = dict(attribution.seconds)
    seconds["other"] = total - sum(seconds.values())
    rows = [{"chapter": stem, "profile": profile, "category": c, "seconds": seconds.get(c, 0.0)} for c in CATEGORIES]
    if count_flops:
        flops = dict(attribution.flops)
        flops["other"] = attribution.total_flops() - sum(flops.values())
        for row in rows:
            row["gflop"] = flops.get(row["category"], 0) / 1e9
    table = pd.DataFrame(rows)
    device = str((extra or {}).get("device", "cpu"))
    if device != "cpu":
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    today = datetime.date.today().isoformat()
    return table.assign(share=table["seconds"] / total, chapter_s=total, device=device, date=today)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stems", nargs="*", help="chapters to profile (default: all, in the book's order)")
    parser.add_argument("--profile", default="paper", choices=["quick", "paper"])
    parser.add_argument("--device", default="cpu", help="the chapters' device parameter: cpu, cuda or cuda:N")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a notebook parameter with a Python literal, e.g. --set 'seeds=[0, 1]'",
    )
    parser.add_argument("--results", type=Path, help="keep the chapters' results here (default: a temporary folder)")
    parser.add_argument("--flops", action="store_true", help="also count each category's FLOPs (slower; see above)")
    parser.add_argument("--csv", help="write _build/benchmarks/CSV.csv (default: profile, or profile_flops with --flops)")
    parser.add_argument("--at", metavar="COMMIT", help="profile the book as it was at COMMIT (see above)")
    args = parser.parse_args(argv)
    chosen = args.stems or stems()
    unknown = sorted(set(chosen) - set(stems()))
    if unknown:
        parser.error(f"unknown chapters {unknown}; the book's are {stems()}")
    extra = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            extra[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--set {item!r}: VALUE must be a Python literal")
    if args.device != "cpu":
        extra["device"] = args.device
    if args.at:
        name, rows, claims = profile_at(args.at, list(argv if argv is not None else sys.argv[1:]), args.csv)
        record(claims, f"{name}_claims")
        return record(rows, name)
    _check_toolkit_is_this_trees()
    name = args.csv or ("profile_flops" if args.flops else "profile")
    with tempfile.TemporaryDirectory() as shared:  # one results root for the invocation's chapters
        root = args.results or Path(shared)
        for stem in chosen:
            print(f"== {stem} at the {args.profile} profile on {args.device}", flush=True)
            rows = profile_chapter(stem, args.profile, extra, root, count_flops=args.flops)
            # after every chapter: a killed run keeps the finished ones
            table = record(rows, name)
            record(chapter_claims(root, stem, args.profile), f"{name}_claims")
    return table


def _check_toolkit_is_this_trees() -> None:
    """Stop unless ``dpo_toolkit`` is imported from this script's own tree (not an installed copy):
    a profile of another commit (``--at``) must time that commit's toolkit."""
    import dpo_toolkit

    where = Path(dpo_toolkit.__file__).resolve()
    if not where.is_relative_to(ROOT):
        raise SystemExit(f"benchmarks.profile: dpo_toolkit is imported from {where}, not from {ROOT}; run it from the tree's top")


def chapter_claims(root: Path, stem: str, profile: str) -> pd.DataFrame:
    """The claims the chapter just wrote (``root/<stem>/claims.csv``): one row per claim with its
    id, verdict and our value; no rows when the chapter wrote none."""
    path = Path(root) / stem / "claims.csv"
    columns = ["claim_id", "verdict", "our_value"]
    claims = pd.read_csv(path)[columns] if path.exists() else pd.DataFrame(columns=columns)
    return claims.assign(chapter=stem, profile=profile)[["chapter", "profile", *columns]]


def record(rows: pd.DataFrame, name: str = "profile") -> pd.DataFrame:
    """Merge one chapter's rows into _build/benchmarks/<name>.csv, replacing that chapter's earlier rows at its profile."""
    table = rows
    previous = OUT / f"{name}.csv"
    if previous.exists():
        old = pd.read_csv(previous)
        if "device" not in old:
            old = old.assign(device="cpu")  # rows written before the device column existed
        done = set(zip(rows["chapter"], rows["profile"], strict=True))
        keep = [(c, p) not in done for c, p in zip(old["chapter"], old["profile"], strict=True)]
        table = pd.concat([old[keep].reindex(columns=rows.columns), rows], ignore_index=True)  # older rows: no date
    write(table, name)
    return table


if __name__ == "__main__":
    main()
