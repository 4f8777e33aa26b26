"""The Performance page on the kernels: the chapters' FLOPs by category against the matmul peak, and
one training step of the sweep op by op with the ways of cutting it."""

from __future__ import annotations

import pandas as pd

from benchmarks import common
from benchmarks.report_common import load, machine_line, source, table


def _flops_sentence(frame: pd.DataFrame, profile: str, peak_gflops: float) -> str:
    """The paragraph on every FLOP the chapters compute at one profile over their time, against the peak."""
    chapters = frame["chapter"].nunique()
    gflop, seconds = frame["gflop"].sum(), frame["seconds"].sum()
    return (
        f"Every floating-point operation the {chapters} chapters compute at the {profile} profile, counted by torch's "
        "FlopCounterMode around the whole chapter (`python -m benchmarks.profile --flops`; matmuls and attention, "
        "which is where torch counts FLOPs) and attributed to the same categories as the time above, divided by "
        f"that time (from the uncounted run: the counter slows small operations down). **{gflop:,.0f} GFLOP in "
        f"{seconds:,.0f} s: {gflop / seconds:.1f} GFLOP/s, {gflop / seconds / peak_gflops:.0%} of this machine's "
        f"measured peak of {peak_gflops:.0f} GFLOP/s.** At the peak they would take {gflop / peak_gflops:,.0f} s; "
        "the rest of the time is work torch does not count as FLOPs (elementwise operations, softmax, LayerNorm, "
        "the optimizer, indexing) and Python.\n"
    )


def flops_by_category() -> list[str]:
    """The section on the chapters' FLOPs (profile_flops.csv, counted) over their uncounted times (profile.csv)
    against the measured matmul peak (peak.csv), by category and by chapter."""
    parts = ["## The chapters against the limit\n"]
    counted, counted_path = load("profile_flops")
    timed, _ = load("profile")
    peak, _ = load("peak")
    if counted is None or timed is None or peak is None:
        parts.append("Not measured yet: run `python -m benchmarks.profile --flops --profile quick` (and the uncounted "
                     "`benchmarks.profile` and `benchmarks.peak`).\n")  # fmt: skip
        return parts
    keys = ["chapter", "profile", "category"]
    both = counted[[*keys, "gflop"]].merge(timed[[*keys, "seconds"]], on=keys)
    peak_gflops = float(peak["gflops"].max())
    for profile, frame in both.groupby("profile", sort=False):
        parts.append(_flops_sentence(frame, profile, peak_gflops))
        for by, label in (("category", "category"), ("chapter", "chapter")):
            rates = frame.groupby(by, sort=False)[["gflop", "seconds"]].sum().reset_index()
            if by == "chapter":  # in the book's order
                rates = rates.sort_values("chapter", key=lambda c: c.map({s: i for i, s in enumerate(common.stems())}))
            rates = rates[(rates["gflop"] > 0) | (rates["seconds"] >= 0.5)]
            rates["gflops"] = rates["gflop"] / rates["seconds"]
            rates["of_peak"] = rates["gflops"] / peak_gflops
            parts.append(f"By {label}, {profile} profile:\n")
            parts.append(table(rates, {by: label, "gflop": "GFLOP", "seconds": "seconds", "gflops": "GFLOP/s",
                                       "of_peak": "of peak"},
                               {"gflop": ",.1f", "seconds": ",.1f", "gflops": ".1f", "of_peak": ".0%"}))  # fmt: skip
    parts.append(source(counted_path))
    return parts


def _matmul_ceiling(groups: pd.DataFrame, first: pd.Series) -> list[str]:
    """The paragraph on the step's matmuls against the sweep's peak, and the ceiling of any fusion; [] without them."""
    sweep, _ = load("sweep_speed")
    matmul_s = float(groups.loc[groups["group"] == "matmuls", "seconds_per_step"].sum())
    if sweep is None or not matmul_s > 0:
        return []
    row = sweep.iloc[0]
    step_gflop = row["mflop_per_pair_update"] * first["models"] * first["batch"] / 1e3
    ceiling = groups["seconds_per_step"].sum() / matmul_s
    return [
        f"\nThe step's {step_gflop:.2f} GFLOP (the sweep's count above) take {matmul_s * 1e3:.1f} ms of matmuls: "
        f"{step_gflop / matmul_s:.0f} GFLOP/s, {step_gflop / matmul_s / row['peak_gflops']:.0%} of the peak measured "
        f"with the sweep. If every other op cost nothing, the step would be {ceiling:.1f}× faster: the ceiling of "
        "any fusion at these shapes in float32, short of computing fewer FLOPs.\n"
    ]


WAYS = (
    "\nWays of cutting it, measured on the step's forward and backward, alternating, in one run:\n\n"
    "- the same forward written without `vmap` (`benchmarks.step_anatomy.stacked_logits`): it runs the same ops, "
    "so its gradients are the same bits, and what it saves is `vmap`'s own dispatch;\n"
    "- that forward under `torch.compile`, which fuses the elementwise work into C++ loops;\n"
    "- that forward with each linear's bias added inside its matmul and the causal attention of every member's "
    "sequences as one fused kernel (`scaled_dot_product_attention`, which has no `vmap` batching rule);\n"
    "- the prompt computed once per pair (its 4 tokens, then chosen and rejected continuing its attention cache: "
    "12 positions per pair instead of 16).\n\n"
    "All but the first add in another order, so their gradients, and every trained model of the book with them, "
    "differ in the last bits; the book's verdicts would have to be re-established (on a GPU, float order alone "
    "changed some of them: see the GPU section).\n"
)


def step_anatomy() -> list[str]:
    """The section on one 30-β training step, op by op, and the ways of cutting it (step_anatomy, step_ops)."""
    parts = ["## One training step, op by op\n"]
    anatomy, path = load("step_anatomy")
    groups, _ = load("step_ops")
    if anatomy is None or groups is None:
        parts.append("Not measured yet: run `python -m benchmarks.step_anatomy`.\n")
        return parts
    first = anatomy.iloc[0]
    parts.append(
        f"Machine: {machine_line(anatomy)}. One step of the sweep above ({int(first['models'])} models, batch "
        f"{int(first['batch'])}, DPO loss, backward, RMSprop) takes {first['full_step_s'] * 1e3:.1f} ms. torch's "
        "profiler splits its ops' own CPU time into four groups:\n"
    )
    shown = groups.assign(ms=groups["seconds_per_step"] * 1e3)
    parts.append(table(shown, {"group": "ops", "ms": "ms per step", "share": "share"}, {"ms": ".1f", "share": ".0%"}))
    parts += _matmul_ceiling(groups, first)
    parts.append(WAYS)
    shown = anatomy.assign(ms=anatomy["forward_backward_s"] * 1e3, bits=anatomy["same_bits"].map({True: "yes", False: "no"}))
    parts.append(table(shown, {"way": "forward and backward", "ms": "ms per step", "speedup": "speed-up",
                               "bits": "same bits", "max_rel_grad_diff": "largest gradient difference (relative)",
                               "compile_s": "compile (s)"},
                       {"ms": ".1f", "speedup": ".2f", "max_rel_grad_diff": ".1e", "compile_s": ".0f"}))  # fmt: skip
    parts.append(source(path))
    return parts
