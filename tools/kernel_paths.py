"""The cross-CPU check of the stored notebook outputs.

Left to themselves, PyTorch's kernels (ATen), MKL's BLAS and oneDNN pick their code by the
CPU's vector unit (AVX-512, AVX2, …), and each path rounds differently; a chaotic training
run (the vanishing-gradients chapter's) turns that into different verdicts. The Makefile's
reference path (REFERENCE_PATH) fixes all three. ``make test-kernel-path`` checks that it
does: it re-runs every notebook under nbval with MKL's and oneDNN's dispatch capped to a
smaller vector unit than this machine's, as on another CPU, and compares the verdicts:

    python -m tools.kernel_paths env          # the capped dispatch, as NAME=VALUE words
    python -m tools.kernel_paths compare A B  # the verdicts of two results folders agree

On an AVX-512 machine the cap is AVX2 (what an AVX2-only CPU, such as many AMD EPYC and
Ryzen parts, runs); on any other, SSE4.2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ALTERNATIVES = {
    # machine's default → (name, environment)
    "AVX512": ("AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "other": ("SSE4.2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
}


def default_capability() -> str:
    """The ATen kernel path PyTorch picks on this machine ('AVX512', 'AVX2', 'DEFAULT', …)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def alternative(capability: str) -> tuple[str, dict[str, str]]:
    """The dispatch cap to run under on a machine whose default is `capability`: (name, environment)."""
    return ALTERNATIVES["AVX512" if capability.upper().startswith("AVX512") else "other"]


def compare(first: Path, second: Path) -> list[str]:
    """Differences between the verdicts of two results folders (one claims.csv per chapter)."""
    from dpo_toolkit.core.claims import read_claims

    problems = []
    chapters = sorted({p.parent.name for p in first.glob("*/claims.csv")} | {p.parent.name for p in second.glob("*/claims.csv")})
    for chapter in chapters:
        a, b = first / chapter / "claims.csv", second / chapter / "claims.csv"
        if not (a.exists() and b.exists()):
            problems.append(f"{chapter}: claims.csv in only one of {first}, {second}")
            continue
        va = dict(zip(read_claims(a)["claim_id"], read_claims(a)["verdict"], strict=True))
        vb = dict(zip(read_claims(b)["claim_id"], read_claims(b)["verdict"], strict=True))
        problems += [
            f"{chapter} {c}: {va.get(c)} vs {vb.get(c)}" for c in sorted(va.keys() | vb.keys()) if va.get(c) != vb.get(c)
        ]
    if not chapters:
        problems.append(f"no claims.csv under {first} or {second}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print the capped dispatch's environment as NAME=VALUE words")
    sub.add_parser("describe", help="print this machine's default path and the cap")
    cmp = sub.add_parser("compare", help="check that two results folders reach the same verdicts")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    capability = default_capability()
    name, env = alternative(capability)
    if args.command == "env":
        print(" ".join(f"{k}={v}" for k, v in env.items()))
    elif args.command == "describe":
        print(f"this CPU's default path: {capability}; second run with the dispatch capped to {name}: "
              f"{' '.join(f'{k}={v}' for k, v in env.items())}")  # fmt: skip
    else:
        problems = compare(args.first, args.second)
        for p in problems:
            print(f"verdicts differ: {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"same verdicts in every chapter under {args.first} and {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
