"""The float-order check of the stored notebook outputs (``make test-float-order``).

Another CPU, another thread count, another kernel or a GPU rounds differently, and training
amplifies a difference in the last bit into a different run. What nbval compares must not move
with it: verdicts decided on intervals over replicates, their replicate counts, and the numbers of
exact computations (CONTRIBUTING, "What the stored outputs pin"). ``make test`` checks this on any
machine: it re-executes every notebook from scratch under perturbations of the float order chosen
to move more bits than Intel against AMD does, and nbval requires every compared output to be
the one stored, then the two passes' verdicts are compared:

    python -m tools.float_order env [NAME]     # a perturbation's environment, as NAME=VALUE words
    python -m tools.float_order describe       # what each perturbation sets on this machine
    python -m tools.float_order bits [NAME]    # share of gradient entries it changes, one training step
    python -m tools.float_order compare A B    # two results folders reach the same verdicts and n

Perturbations (``all``, the default, sets them together):
- ``threads``: one thread instead of two: every parallel reduction is split differently;
- ``vector``: ATen's kernels, MKL and oneDNN capped below this CPU's vector unit (AVX2 on an
  AVX-512 machine, the scalar/SSE4.2 path otherwise);
- ``ulp``: every freshly built model's initial weights one ulp up (``DPO_FLOAT_PERTURB=1``,
  ``core.model.build_model``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CAPS = {
    # machine's default ATen path → the capped environment
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "other": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ULP = {"DPO_FLOAT_PERTURB": "1"}
NAMES = ("threads", "vector", "ulp", "all")
# The variables a perturbation may set: cleared from the environment of a baseline measurement.
FLOAT_ORDER_VARIABLES = ("ATEN_", "MKL_", "ONEDNN_", "OMP_", "DPO_FLOAT_PERTURB", "DPO_REFERENCE")


def default_capability() -> str:
    """The ATen kernel path PyTorch picks on this machine ('AVX512', 'AVX2', 'DEFAULT', …)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def alternative(capability: str) -> dict[str, str]:
    """The vector-unit cap for a machine whose default ATen path is `capability`."""
    return CAPS["AVX512" if capability.upper().startswith("AVX512") else "other"]


def perturbation(name: str, capability: str | None = None) -> dict[str, str]:
    """The environment of perturbation `name` (one of NAMES) on a machine of `capability`."""
    if name not in NAMES:
        raise ValueError(f"perturbation must be one of {NAMES}, got {name!r}")
    vector = alternative(capability or default_capability())
    parts = {"threads": THREADS, "vector": vector, "ulp": ULP}
    return {k: v for part, env in parts.items() if name in (part, "all") for k, v in env.items()}


def compare(first: Path, second: Path) -> list[str]:
    """Differences between the verdicts (and replicate counts) of two results folders, one
    claims.csv per chapter."""
    from dpo_toolkit.core.claims import read_claims

    problems = []
    chapters = sorted({p.parent.name for p in first.glob("*/claims.csv")} | {p.parent.name for p in second.glob("*/claims.csv")})
    for chapter in chapters:
        a, b = first / chapter / "claims.csv", second / chapter / "claims.csv"
        if not (a.exists() and b.exists()):
            problems.append(f"{chapter}: claims.csv in only one of {first}, {second}")
            continue
        va, vb = ({r.claim_id: f"{r.verdict} (n={r.n or '–'})" for r in read_claims(p).itertuples()} for p in (a, b))
        problems += [
            f"{chapter} {c}: {va.get(c)} vs {vb.get(c)}" for c in sorted(va.keys() | vb.keys()) if va.get(c) != vb.get(c)
        ]
    if not chapters:
        problems.append(f"no claims.csv under {first} or {second}")
    return problems


GRADIENTS = """
import sys, numpy, torch
import dpo_toolkit
from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import build_model
tokens = torch.randint(0, 12, (64, 8), generator=torch.Generator().manual_seed(0))
mask = torch.zeros(64, 8, dtype=torch.bool)
mask[:, -3:] = True
policies = Ensemble([build_model(ModelConfig(), seed) for seed in range(3)])
(-sequence_logps(policies(tokens), tokens, mask).mean()).backward()
numpy.save(sys.argv[1], torch.cat([p.grad.flatten() for p in policies.params.values()]).numpy())
"""


def gradients(env: dict[str, str], path: Path):
    """One training step's gradients (three models, one batch; a numpy array) computed in a fresh
    process under `env` on top of this environment cleared of every float-order variable."""
    import numpy as np

    clean = {k: v for k, v in os.environ.items() if not k.startswith(FLOAT_ORDER_VARIABLES)}
    subprocess.run([sys.executable, "-c", GRADIENTS, str(path)], env={**clean, "OMP_NUM_THREADS": "2", **env}, check=True)
    return np.load(path)


def changed_share(name: str, folder: Path) -> float:
    """Share of gradient entries that perturbation `name` changes against two threads on this
    machine's default kernels."""
    base = gradients({}, folder / "base.npy")
    return float((gradients(perturbation(name), folder / f"{name}.npy") != base).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("env", "bits"):
        sub.add_parser(command).add_argument("name", nargs="?", default="all", choices=NAMES)
    sub.add_parser("describe", help="print what each perturbation sets on this machine")
    cmp = sub.add_parser("compare", help="check that two results folders reach the same verdicts")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    if args.command == "env":
        print(" ".join(f"{k}={v}" for k, v in perturbation(args.name).items()))
    elif args.command == "describe":
        print(f"this CPU's default ATen path: {default_capability()}; the second pass perturbs the float order: "
              + "; ".join(f"{n}: {' '.join(f'{k}={v}' for k, v in perturbation(n).items())}" for n in NAMES[:-1]))  # fmt: skip
    elif args.command == "bits":
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            print(f"{args.name}: {changed_share(args.name, Path(folder)):.1%} of one step's gradient entries change")
    else:
        problems = compare(args.first, args.second)
        for p in problems:
            print(f"verdicts differ: {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"same verdicts and replicate counts in every chapter under {args.first} and {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
