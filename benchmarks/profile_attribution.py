"""The timers of ``benchmarks.profile``: the toolkit's entry points, each charged to a category, and
the attribution of *exclusive* wall time (and, with a FlopCounterMode, FLOPs) to those categories."""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import stems

# (module, attribute path, category); a category may be a function of the call's arguments.
TARGETS: list[tuple[str, str, object]] = [
    ("dpo_toolkit.core.train", "optimize", "training"),
    ("dpo_toolkit.core.train", "fit_full_batch", "training"),
    ("dpo_toolkit.studies.likelihood_displacement.theory", "features_dpo", "training"),
    ("dpo_toolkit.studies.ches.measures", "single_pair_displacement", "training"),
    (
        "dpo_toolkit.core.generate",
        "_decode",
        lambda args, kwargs: "sampling" if (args[2:] or [kwargs.get("generator")])[0] is not None else "greedy decoding",
    ),
    ("dpo_toolkit.core.evaluate", "Evaluator.kl", "KL scoring"),
    ("dpo_toolkit.core.evaluate", "Evaluator.__call__", "evaluation (log-probs, metrics)"),
    ("dpo_toolkit.core.exact", "response_masses", "exact enumeration"),
    ("dpo_toolkit.core.exact", "enumerate_responses", "exact enumeration"),
    ("dpo_toolkit.studies.vanishing_gradients.rft", "value_gradient_norms", "per-input gradients"),
    ("torch", "save", "I/O"),
    ("torch", "load", "I/O"),
    ("pandas", "read_csv", "I/O"),
    ("pandas", "DataFrame.to_csv", "I/O"),
]
CATEGORIES = [
    "training",
    "greedy decoding",
    "sampling",
    "KL scoring",
    "evaluation (log-probs, metrics)",
    "exact enumeration",
    "per-input gradients",
    "plotting",
    "I/O",
    "other",
]


class Attribution:
    """Exclusive wall time (and, with a FlopCounterMode, FLOPs) per category, from a stack of
    the wrapped calls in progress: a call is charged its own total minus its wrapped calls'."""

    def __init__(self, counter: FlopCounterMode | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.counter = counter
        self.stack: list[list] = []  # [category, start time, nested time, start FLOPs, nested FLOPs]

    def total_flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def wrap(self, fn, category):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = category(args, kwargs) if callable(category) else category
            self.stack.append([name, time.perf_counter(), 0.0, self.total_flops(), 0])
            try:
                return fn(*args, **kwargs)
            finally:
                if torch.cuda.is_initialized():
                    torch.cuda.synchronize()  # charge the GPU's queued work to the call that queued it
                name, start, nested, start_flops, nested_flops = self.stack.pop()
                elapsed, counted = time.perf_counter() - start, self.total_flops() - start_flops
                self.seconds[name] += elapsed - nested
                self.flops[name] += counted - nested_flops
                if self.stack:
                    self.stack[-1][2] += elapsed
                    self.stack[-1][4] += counted

        return timed


@contextlib.contextmanager
def instrumented(attribution: Attribution):
    """Replace every target (and every plotting function) by its timed wrapper wherever a loaded module holds it."""
    import dpo_toolkit.plotting as plotting

    targets = list(TARGETS) + [("dpo_toolkit.plotting", n, "plotting") for n in dir(plotting) if n.startswith("plot_")]
    for module_name in ["dpo_toolkit.core.runner", "dpo_toolkit.recipes.sft_then_dpo", *[m for m, _, _ in targets]]:
        importlib.import_module(module_name)
    for stem in stems():  # every study module, so that names they imported are replaced too
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"dpo_toolkit.studies.{stem}")
    restore = []
    for module_name, path, category in targets:
        owner = importlib.import_module(module_name)
        *parents, attr = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, attr)
        timed = attribution.wrap(original, category)
        holders = [owner] + [m for n, m in list(sys.modules.items()) if n.startswith("dpo_toolkit") and m is not owner]
        for holder in holders:
            if getattr(holder, attr, None) is original:
                setattr(holder, attr, timed)
                restore.append((holder, attr, original))
    try:
        yield
    finally:
        for holder, attr, original in reversed(restore):
            setattr(holder, attr, original)
