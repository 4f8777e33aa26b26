"""The drift map's update-count axis at a profile, one process per seed, then its tables and claims.

The axis is the drift map's longest part (paper profile: 56 min on 2 cores, two seeds at a time; docs/timings.md). Its
seeds are independent (each trains its own reference), so they can run side by side, each in its
own process, on a many-core machine or on one GPU; the runner's cache then holds every run, and a
last process reads them all (nothing is trained twice) and writes the tables and claims the
chapter would show:

    python -m benchmarks.drift_updates params  --profile paper > params.json    # where PyYAML is
    python -m benchmarks.drift_updates seed    --params params.json --cache DIR --seed 3 [--device cuda]
    python -m benchmarks.drift_updates combine --params params.json --cache DIR --out OUT [--device cuda] [--seeds 0 1 …]
    python -m benchmarks.drift_updates merge   --dirs OUT_A OUT_B --out OUT

`merge` pools tasks run apart (each `combine`'s update_read.csv.gz and mass_flows.csv.gz, one task each):
the claims the chapter would show had one process run them all (C24 pools its strata over tasks).

The parameters are the chapter's: the defaults of notebooks/drift_map.md's `parameters` cell with
params/<profile>/drift_map.yaml over them; the set-up is built as the chapter's set-up cell builds it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chapter_parameters(profile: str) -> dict:
    """The drift map's parameters at `profile`: the notebook's defaults, then the profile's file."""
    text = (ROOT / "notebooks" / "drift_map.md").read_text()
    cell = re.search(r"```\{code-cell\} ipython3\n:tags: \[parameters\]\n(.*?)```", text, re.S).group(1)
    values: dict = {}
    exec(compile(cell, "drift_map parameters", "exec"), {}, values)
    path = ROOT / "params" / profile / "drift_map.yaml"
    if path.exists():
        import yaml

        values |= yaml.safe_load(path.read_text())
    return values


def _axis(values: dict, device: str):
    from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig
    from dpo_toolkit.recipes.sft_then_dpo import sft_recipe
    from dpo_toolkit.studies.drift_map import check_parameters, updates
    from dpo_toolkit.studies.drift_map.runs import MapSetup

    check_parameters({**values, "device": device})
    data_cfg = DataConfig(prompt_min=values["prompt_min"], prompt_max=values["prompt_max"], window=values["window"],
                          test_fraction=values["test_fraction"], seed=values["split_seed"])  # fmt: skip
    setup = MapSetup(  # as the chapter's set-up cell
        data=data_cfg,
        model=ModelConfig(),
        eval=EvalConfig(kl_samples=values["kl_samples"], max_pairs=values["margin_pairs"]),
        kl_sweep_sft=sft_recipe("kl_sweep", values["sft_epochs"], lr=values["sft_lr"], batch_size=values["batch_size"]),
        grokking_sft=sft_recipe("grokking", values["grokking_sft_epochs"]),
        evals_per_epoch=values["evals_per_epoch"],
        scored_train_pairs=values["scored_train_pairs"],
    )
    axes = updates.update_axes(values["update_tasks"], {"grokking": values["grokking_optimizers"],
                               "kl_sweep": values["kl_optimizers"]}, values["update_lrs"], values["update_betas"],
                               {"grokking": values["grokking_read_epochs"], "kl_sweep": values["kl_read_epochs"]})  # fmt: skip
    return axes, setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["params", "seed", "combine", "merge"])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--params", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--seeds", type=int, nargs="*", help="combine: only these seeds (those whose process finished)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dirs", type=Path, nargs="*", help="merge: `combine` outputs of disjoint tasks")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.step == "params":
        json.dump(chapter_parameters(args.profile), sys.stdout, indent=1)
        return
    if args.step == "merge":
        _merge(args.dirs, args.out)
        return
    values = json.loads(args.params.read_text())
    axes, setup = _axis(values, args.device)
    from dpo_toolkit.studies.drift_map import updates

    start = time.perf_counter()
    seeds = [args.seed] if args.step == "seed" else (args.seeds or values["update_seeds"])
    curves, read = updates.run_updates(axes, setup, seeds, args.cache, device=args.device, members=False)  # a process per seed
    if args.step == "seed":
        print(f"seed {args.seed}: {time.perf_counter() - start:.1f} s", flush=True)
        return
    _combine(curves, read, args.out)


def _combine(curves, read, out: Path) -> None:
    from dpo_toolkit.studies.drift_map import mass

    _write(read, mass.mass_flow(curves, read), out)


def _merge(dirs: list[Path], out: Path) -> None:
    """Pool the reads and mass flows of `combine` outputs whose tasks are disjoint."""
    import pandas as pd

    frames = {name: [pd.read_csv(d / f"{name}.csv.gz") for d in dirs] for name in ("update_read", "mass_flows")}
    tasks = [set(f["task"]) for f in frames["update_read"]]
    if sum(map(len, tasks)) != len(set().union(*tasks)):
        raise SystemExit(f"merge: the dirs' tasks overlap: {tasks}")
    read, flows = (pd.concat(f, ignore_index=True) for f in frames.values())
    for frame, column in ((read, "collapse"), (flows, "collapse"), (flows, "kind")):  # empty labels read back as NaN
        frame[column] = frame[column].fillna("")
    sources = [(d / "summary.txt").read_text().split(";")[0] for d in dirs]
    merged = ", ".join(f"{d.name} ({c})" for d, c in zip(dirs, sources, strict=True))
    _write(read, flows, out, per_run=False, header=f"merged from {merged}")


def _write(read, flows, out: Path, per_run: bool = True, header: str | None = None) -> None:
    """The tables, claims and summary the chapter would show from the axis's reads and mass flows
    (with `per_run`, those two as well, compressed)."""
    import subprocess

    import pandas as pd

    from benchmarks.common import machine
    from dpo_toolkit.studies.drift_map import mass, updates
    from dpo_toolkit.studies.drift_map.claims import update_claims

    out.mkdir(parents=True, exist_ok=True)
    cells = updates.update_cells(read)
    claims = update_claims(read, cells, flows)
    recipe = updates.drifting_cell(read, cells)
    for name, frame in {"update_cells": cells, "claims": claims, "flow_summary": mass.flow_summary(flows)}.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    for name, frame in {"update_read": read, "mass_flows": flows}.items() if per_run else ():
        frame.to_csv(out / f"{name}.csv.gz", index=False)
    if header is None:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        header = f"commit {commit or 'unknown'}; {machine()}"
    seeds = sorted(read["seed"].unique().tolist())
    lines = [f"{header}; seeds {seeds}; tasks {sorted(read['task'].unique())}"]
    lines += [updates.when_it_drifts(cells), "drifting recipe: " + ("none" if recipe is None else recipe.to_json())]
    lines += [f"{r.claim_id}: {r.verdict} | {r.our_value}" for r in claims.itertuples()]
    (out / "summary.txt").write_text("\n\n".join(lines) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("\n\n".join(lines))


if __name__ == "__main__":
    main()
