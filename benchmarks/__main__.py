"""Run the whole benchmark suite: ``python -m benchmarks`` (after ``pip install .[bench]``).

Each script runs in its own process, one after another (never two timed jobs at once), and
writes its CSV under ``_build/benchmarks/``; then the Performance page is regenerated.
Pass --quick for a short smoke run (fewer steps and repeats).
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import ROOT

BEFORE = "7b0f35d"  # the last commit before issue 20's speed-ups: the Performance page's *before*
# the chapters whose paper-profile work is the same at BEFORE and now (their claims say so on the page);
# the others gained drifting arms, maps and tasks since, so a paper-profile time at BEFORE says nothing of speed
SAME_WORK = ["grokking", "mixture_tpm", "vanishing_gradients"]

FULL = [
    ["benchmarks.peak"],
    ["benchmarks.throughput"],
    ["benchmarks.sweep_speed"],
    ["benchmarks.eval_speed"],
    ["benchmarks.step_anatomy"],
    ["benchmarks.scaling"],
    ["benchmarks.replicates"],
    ["benchmarks.long_runs"],
    ["benchmarks.book", "--run", "quick", "--jobs", "1", "2"],
    ["benchmarks.book", "--run", "paper", "--jobs", "2"],  # about 50 min; one at a time is the paper profile below
    ["benchmarks.profile", "--profile", "quick", "--at", BEFORE, "--csv", "profile_baseline"],
    ["benchmarks.profile", "--profile", "quick"],
    ["benchmarks.profile", "--profile", "quick", "--flops"],  # FLOPs by category; its times are not used
    ["benchmarks.profile", *SAME_WORK, "--profile", "paper", "--at", BEFORE, "--csv", "profile_baseline"],  # about 35 min
    ["benchmarks.profile", "--profile", "paper", "--results", "_build/benchmarks/paper-results"],
    ["benchmarks.gpu_book", "claims", "_build/benchmarks/paper-results"],
]
GPU = [  # where torch sees CUDA: the paper-profile book on the GPU, its verdicts beside the CPU's
    ["bash", "benchmarks/gpu_book.sh", "_build/benchmarks/gpu"],
    ["benchmarks.gpu_book", "collect", "_build/benchmarks/gpu"],
]
QUICK = [
    ["benchmarks.peak"],
    ["benchmarks.throughput", "--steps", "20", "--repeats", "1"],
    ["benchmarks.sweep_speed", "--steps", "20", "--subset", "1", "--repeats", "1"],
    ["benchmarks.eval_speed", "--repeats", "1", "--sft-epochs", "1"],
    ["benchmarks.step_anatomy", "--steps", "5", "--repeats", "1"],
    ["benchmarks.scaling", "--steps", "5"],
    ["benchmarks.replicates", "--steps", "10", "--repeats", "1"],
    ["benchmarks.long_runs", "--members", "10", "--steps", "5", "--repeats", "1"],
    ["benchmarks.book", "--run", "quick", "--jobs", "2"],
    ["benchmarks.profile", "likelihood_displacement", "--profile", "quick"],
]


def main() -> int:
    suite = QUICK if "--quick" in sys.argv[1:] else FULL
    if suite is FULL:
        import torch

        if torch.cuda.is_available():
            suite = FULL + GPU
        else:
            print("No CUDA device: the Performance page keeps the committed GPU measurements (benchmarks/results/).")
    for module, *args in suite:
        print(f"== {module} {' '.join(args)}", flush=True)
        command = [module, *args] if module == "bash" else [sys.executable, "-m", module, *args]
        subprocess.run(command, cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
